// Upload with progress: the form's own POST, sent by XMLHttpRequest so that upload progress
// can be shown. The server answers {"url": ...} or {"error": ...}. Without this script the
// form posts normally.
(function () {
  "use strict";

  const form = document.getElementById("upload-form");
  const configElement = document.getElementById("upload-config");
  if (!form || !configElement || !window.FormData || !window.XMLHttpRequest) return;

  const config = JSON.parse(configElement.textContent);
  const strings = config.strings;
  const input = form.querySelector('input[type="file"]');
  const zone = document.getElementById("dropzone");
  const chosen = document.getElementById("upload-chosen");
  const errorBox = document.getElementById("upload-error");
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const message = document.getElementById("upload-message");
  const button = form.querySelector('button[type="submit"]');

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (match, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? String(values[key]) : match;
    });
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
    status.hidden = true;
    button.disabled = false;
    form.removeAttribute("aria-busy");
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function showChosen() {
    const file = input.files && input.files[0];
    chosen.textContent = file ? format(strings.chosen, { name: file.name }) : "";
  }

  input.addEventListener("change", function () {
    clearError();
    showChosen();
  });

  // A file dropped anywhere on the page goes to the form rather than replacing the page.
  ["dragenter", "dragover"].forEach(function (type) {
    document.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("is-dragging");
    });
  });
  document.addEventListener("dragleave", function (event) {
    if (!event.relatedTarget) zone.classList.remove("is-dragging");
  });
  document.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("is-dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    clearError();
    showChosen();
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const file = input.files && input.files[0];
    if (!file) {
      showError(strings.choose);
      return;
    }
    if (file.size > config.maxBytes) {
      showError(strings.tooLarge);
      return;
    }
    clearError();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    request.setRequestHeader("Accept", "application/json");
    request.responseType = "json";
    request.upload.addEventListener("progress", function (progress) {
      if (!progress.lengthComputable) return;
      const percent = Math.floor((100 * progress.loaded) / progress.total);
      bar.value = percent;
      message.textContent = format(strings.uploading, { percent: percent + "\u202f%" });
    });
    request.upload.addEventListener("load", function () {
      bar.removeAttribute("value"); // indeterminate while the server analyses
      message.textContent = strings.analysing;
    });
    request.addEventListener("load", function () {
      const answer = request.response || {};
      if (request.status >= 200 && request.status < 300 && answer.url) {
        window.location.assign(answer.url);
      } else {
        showError(answer.error || strings.failed);
      }
    });
    request.addEventListener("error", function () {
      showError(strings.failed);
    });
    status.hidden = false;
    bar.value = 0;
    message.textContent = format(strings.uploading, { percent: "0\u202f%" });
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    request.send(new FormData(form));
  });
})();
