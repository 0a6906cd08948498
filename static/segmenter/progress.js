// Follows a queued or running analysis by polling its status; opens the result when done.
// Without this script the page refreshes itself (meta refresh in <noscript>).
(function () {
  "use strict";

  const configElement = document.getElementById("progress-config");
  if (!configElement || !window.fetch) return;
  const config = JSON.parse(configElement.textContent);
  const bar = document.getElementById("progress-bar");
  const count = document.getElementById("progress-count");
  const status = document.getElementById("progress-status");
  const retry = document.getElementById("progress-retry");

  function show(state) {
    bar.max = Math.max(state.slices_total, 1);
    bar.value = state.slices_done;
    count.textContent = config.strings.count
      .replace("%(done)s", state.slices_done)
      .replace("%(total)s", state.slices_total);
    status.textContent = state.status_label.charAt(0).toUpperCase() + state.status_label.slice(1);
    status.className = "status-pill status-" + state.status;
    retry.hidden = !state.retrying;
    retry.textContent = state.retry_note;
  }

  function poll() {
    fetch(config.statusUrl, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (state) {
        show(state);
        if (state.finished) {
          window.location.replace(state.url);
        } else {
          window.setTimeout(poll, config.intervalMs);
        }
      })
      .catch(function () {
        window.setTimeout(poll, config.intervalMs * 3);
      });
  }

  window.setTimeout(poll, config.intervalMs);
})();
