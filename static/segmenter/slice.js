// The segmentation view: composes the grey slice and its label map in a canvas, so that
// switching, recolouring and fading layers needs no round trip. The overlay download link,
// the page address and the previous/next links follow the chosen layers. Without this
// script the page shows the server's overlay and the layer form submits normally.
(function () {
  "use strict";

  const dataElement = document.getElementById("slice-data");
  if (!dataElement) return;
  const data = JSON.parse(dataElement.textContent);
  const strings = JSON.parse(document.getElementById("slice-strings").textContent);
  const form = document.getElementById("layer-form");
  const figure = document.getElementById("overlay-figure");
  const canvas = document.getElementById("overlay-canvas");
  const fallback = document.getElementById("overlay-image");
  const download = document.getElementById("download-overlay");
  const layerNames = Object.keys(data.labels_of);
  const context = canvas.getContext("2d");
  if (!context) return;

  let grey = null;
  let labels = null;
  let output = null;
  let scheduled = false;
  let touched = false; // the address bar changes only once someone changes a layer

  function pixelsOf(url) {
    return new Promise(function (resolve, reject) {
      const image = new Image();
      image.onload = function () {
        const scratch = document.createElement("canvas");
        scratch.width = data.width;
        scratch.height = data.height;
        const scratchContext = scratch.getContext("2d", { willReadFrequently: true });
        scratchContext.drawImage(image, 0, 0);
        resolve(scratchContext.getImageData(0, 0, data.width, data.height).data);
      };
      image.onerror = function () {
        reject(new Error("could not load " + url));
      };
      image.src = url;
    });
  }

  function rgbOf(hex) {
    const value = parseInt(hex.replace("#", ""), 16);
    return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
  }

  function choices() {
    const styles = {};
    layerNames.forEach(function (name) {
      styles[name] = {
        visible: form.elements[name + "_visible"].checked,
        colour: form.elements[name + "_colour"].value.toLowerCase(),
        opacity: parseFloat(form.elements[name + "_opacity"].value),
      };
    });
    return { styles: styles, maskOnly: form.elements.mask.checked };
  }

  // Same rule as ml.overlay.render_overlay: out = (1 - opacity) * base + opacity * colour,
  // base being the grey slice, or black in the mask-only view.
  function render() {
    scheduled = false;
    const chosen = choices();
    const byLabel = [null, null, null, null];
    layerNames.forEach(function (name) {
      const style = chosen.styles[name];
      if (style.visible && style.opacity > 0) {
        byLabel[data.labels_of[name]] = { rgb: rgbOf(style.colour), opacity: style.opacity };
      }
    });
    const out = output.data;
    for (let i = 0; i < out.length; i += 4) {
      const base = chosen.maskOnly ? 0 : grey[i];
      const layer = byLabel[labels[i]];
      if (layer) {
        const keep = 1 - layer.opacity;
        out[i] = Math.round(keep * base + layer.opacity * layer.rgb[0]);
        out[i + 1] = Math.round(keep * base + layer.opacity * layer.rgb[1]);
        out[i + 2] = Math.round(keep * base + layer.opacity * layer.rgb[2]);
      } else {
        out[i] = out[i + 1] = out[i + 2] = base;
      }
      out[i + 3] = 255;
    }
    context.putImageData(output, 0, 0);
    follow(chosen);
  }

  function schedule() {
    if (!scheduled) {
      scheduled = true;
      window.requestAnimationFrame(render);
    }
  }

  // The download link, the address bar and the pager carry the current choices.
  function follow(chosen) {
    const overlayQuery = new URLSearchParams();
    layerNames.forEach(function (name) {
      const style = chosen.styles[name];
      overlayQuery.set(name, [style.colour.replace("#", ""), style.opacity, style.visible ? 1 : 0].join(","));
      document.body.style.setProperty("--" + name.replace("_", "-"), style.colour); // legends follow
      const shown = document.getElementById(name + "-opacity-value");
      if (shown) shown.textContent = Math.round(style.opacity * 100) + "\u202f%";
    });
    overlayQuery.set("mask", chosen.maskOnly ? "1" : "0");
    download.href = data.overlay + "?" + overlayQuery.toString();
    if (!touched) return;

    const pageQuery = "?" + new URLSearchParams(new FormData(form)).toString();
    window.history.replaceState(null, "", pageQuery);
    ["previous-slice", "next-slice"].forEach(function (id) {
      const link = document.getElementById(id);
      if (link) link.href = link.href.split("?")[0] + pageQuery;
    });
  }

  function changed() {
    touched = true;
    schedule();
  }

  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    schedule();
  });

  Promise.all([pixelsOf(data.image), pixelsOf(data.labels)])
    .then(function (loaded) {
      grey = loaded[0];
      labels = loaded[1];
      output = context.createImageData(data.width, data.height);
      render();
      fallback.hidden = true;
      canvas.hidden = false;
      figure.dataset.ready = "true";
    })
    .catch(function () {
      figure.dataset.ready = "failed";
      const note = document.createElement("p");
      note.className = "hint";
      note.textContent = strings.unavailable;
      figure.appendChild(note);
    });
})();
