// The stack viewer of the study and slice pages: one canvas that shows a slice of the
// study (or the one slice of a slice page), side by side with its segmentation or alone.
// The wheel and the arrow keys move through the slices (neighbours are fetched ahead),
// Ctrl + wheel and the buttons zoom, dragging pans, and for slices with Hounsfield units
// the window presets and right-drag set the window. The position is kept in the address
// as #slice=N. Every pixel comes from the server's per-slice files: the 8-bit grey PNG,
// the label PNG (coloured here with the layer controls) and, for window/level, the HU
// PNG (R = high byte, G = low byte of HU + 32768; see segmenter/ml/overlay.py pack_hu).
// The image is drawn by pixel replication (no smoothing), so every pixel on the screen
// is a pixel of the slice. Without this script the server's images and form work alone.
(function () {
  "use strict";

  const dataElement = document.getElementById("viewer-data");
  if (!dataElement) return;
  const data = JSON.parse(dataElement.textContent);
  const strings = JSON.parse(document.getElementById("viewer-strings").textContent);
  const root = document.getElementById("viewer");
  const frame = document.getElementById("overlay-figure");
  const canvas = document.getElementById("overlay-canvas");
  const fallback = document.getElementById("viewer-fallback");
  const form = document.getElementById("layer-form");
  const slider = document.getElementById("viewer-slider");
  const position = document.getElementById("viewer-position");
  const zoomReadout = document.getElementById("viewer-zoom");
  const openLink = document.getElementById("viewer-open");
  const windowControls = document.getElementById("window-controls");
  const windowReadout = document.getElementById("window-readout");
  const download = document.getElementById("download-overlay"); // the slice page's
  const context = canvas.getContext("2d");
  if (!context || !window.fetch || !window.createImageBitmap) return;

  const layerNames = Object.keys(data.labelsOf);
  const slices = data.slices;
  const total = slices.length;
  const CACHE_SLICES = 48; // decoded slices kept (about 0.8 MB each at 512 x 512)
  const PREFETCH = 3; // neighbours fetched ahead on each side
  const WHEEL_STEP = 50; // a wheel notch (or this many pixels of a touchpad's scrolling) is one slice
  const ZOOM_STEP = 1.25;
  const ZOOM_MIN = 0.25;
  const ZOOM_MAX = 32;
  const PAN_STEP = 40; // CSS pixels per Shift + arrow
  const WINDOW_PER_PX = 4; // HU of width (left-right) or level (up-down) per dragged pixel

  let current = 0; // position in `slices`
  let shownEntry = null;
  let view = { zoom: 1, panX: 0, panY: 0 }; // zoom 1 fits the pane; pan in CSS pixels
  let windowing = null; // null: the stored grey; else { width, level } in HU
  let lut = null; // Uint8Array(65536): grey of HU + offset under `windowing`
  let touched = false; // the slice page's address changes only once a layer changes
  let wheelRest = 0;
  let drag = null;
  let composed = { ct: document.createElement("canvas"), overlay: document.createElement("canvas") };
  const cache = new Map(); // position -> Promise of { width, height, grey, labels }
  const huCache = new Map(); // position -> Promise of Int16Array

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, key) {
      return values[key];
    });
  }

  function urlOf(kind, pos) {
    return data.urls[kind].replace("{index}", String(slices[pos].index));
  }

  // --- Loading --------------------------------------------------------------------------

  function rgbaOf(url) {
    return fetch(url, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("could not load " + url);
        return response.blob();
      })
      .then(function (blob) {
        // No colour management and no premultiplication: the values as stored.
        return createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      })
      .then(function (bitmap) {
        const scratch = document.createElement("canvas");
        scratch.width = bitmap.width;
        scratch.height = bitmap.height;
        const scratchContext = scratch.getContext("2d", { willReadFrequently: true });
        scratchContext.drawImage(bitmap, 0, 0);
        const pixels = scratchContext.getImageData(0, 0, bitmap.width, bitmap.height).data;
        const out = { width: bitmap.width, height: bitmap.height, rgba: pixels };
        if (bitmap.close) bitmap.close();
        return out;
      });
  }

  function channel(rgba, n) {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = rgba[i * 4];
    return out;
  }

  function remember(map, pos, promise) {
    map.set(pos, promise);
    promise.catch(function () {
      map.delete(pos); // try again next time
    });
    if (map.size > CACHE_SLICES) {
      // Forget the slices farthest from the one shown.
      const far = Array.from(map.keys()).sort(function (a, b) {
        return Math.abs(b - current) - Math.abs(a - current);
      });
      far.slice(0, map.size - CACHE_SLICES).forEach(function (k) {
        map.delete(k);
      });
    }
    return promise;
  }

  function load(pos) {
    if (cache.has(pos)) return cache.get(pos);
    const promise = Promise.all([rgbaOf(urlOf("image", pos)), rgbaOf(urlOf("labels", pos))]).then(function (two) {
      const n = two[0].width * two[0].height;
      return { width: two[0].width, height: two[0].height, grey: channel(two[0].rgba, n), labels: channel(two[1].rgba, n) };
    });
    return remember(cache, pos, promise);
  }

  function loadHu(pos) {
    if (!slices[pos].hu) return Promise.resolve(null);
    if (huCache.has(pos)) return huCache.get(pos);
    const promise = rgbaOf(urlOf("hu", pos)).then(function (image) {
      const n = image.width * image.height;
      const hu = new Int16Array(n);
      const rgba = image.rgba;
      for (let i = 0; i < n; i++) hu[i] = ((rgba[i * 4] << 8) | rgba[i * 4 + 1]) - data.huOffset;
      return hu;
    });
    return remember(huCache, pos, promise);
  }

  function prefetch() {
    for (let d = 1; d <= PREFETCH; d++) {
      [current + d, current - d].forEach(function (pos) {
        if (pos < 0 || pos >= total) return;
        load(pos).catch(function () {});
        if (windowing) loadHu(pos).catch(function () {});
      });
    }
  }

  // --- Composing the slice (at its own size) ----------------------------------------------

  function choices() {
    const styles = {};
    layerNames.forEach(function (name) {
      const draw = form.elements[name + "_draw"];
      styles[name] = {
        visible: form.elements[name + "_visible"].checked,
        colour: form.elements[name + "_colour"].value.toLowerCase(),
        opacity: parseFloat(form.elements[name + "_opacity"].value),
        outline: Boolean(draw && draw.value === "outline"),
      };
    });
    return { styles: styles, maskOnly: form.elements.mask.checked, split: form.elements.view.value !== "single" };
  }

  function rgbOf(hex) {
    const value = parseInt(hex.replace("#", ""), 16);
    return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
  }

  function windowLut(width, level) {
    const table = new Uint8Array(65536);
    const low = level - width / 2;
    for (let v = 0; v < 65536; v++) {
      const grey = Math.round(((v - data.huOffset - low) * 255) / width);
      table[v] = grey < 0 ? 0 : grey > 255 ? 255 : grey;
    }
    return table;
  }

  // Fill: the same rule as ml.overlay.render_overlay, out = (1 - opacity) * base +
  // opacity * colour, base being the grey slice or black in the mask-only view.
  // Outline: a layer's pixels with a 4-neighbour of another class (or on the image's
  // edge) take the layer's colour in full; its inside keeps the base.
  function compose(entry, hu) {
    const chosen = choices();
    const w = entry.width;
    const h = entry.height;
    const n = w * h;
    const labels = entry.labels;
    let grey = entry.grey;
    if (hu && lut) {
      grey = new Uint8Array(n);
      for (let i = 0; i < n; i++) grey[i] = lut[hu[i] + data.huOffset];
    }
    const byLabel = [null, null, null, null];
    layerNames.forEach(function (name) {
      const style = chosen.styles[name];
      if (style.visible && (style.outline || style.opacity > 0)) {
        byLabel[data.labelsOf[name]] = { rgb: rgbOf(style.colour), opacity: style.outline ? 1 : style.opacity, outline: style.outline };
      }
    });
    ["ct", "overlay"].forEach(function (kind) {
      if (composed[kind].width !== w || composed[kind].height !== h) {
        composed[kind].width = w;
        composed[kind].height = h;
      }
    });
    const ctImage = new ImageData(w, h);
    const ovImage = new ImageData(w, h);
    const ct = ctImage.data;
    const ov = ovImage.data;
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      const g = grey[i];
      ct[j] = ct[j + 1] = ct[j + 2] = g;
      ct[j + 3] = 255;
      const base = chosen.maskOnly ? 0 : g;
      const label = labels[i];
      const layer = byLabel[label];
      let paint = Boolean(layer);
      if (paint && layer.outline) {
        const x = i % w;
        paint =
          x === 0 || x === w - 1 || i < w || i >= n - w ||
          labels[i - 1] !== label || labels[i + 1] !== label || labels[i - w] !== label || labels[i + w] !== label;
      }
      if (paint) {
        const keep = 1 - layer.opacity;
        ov[j] = Math.round(keep * base + layer.opacity * layer.rgb[0]);
        ov[j + 1] = Math.round(keep * base + layer.opacity * layer.rgb[1]);
        ov[j + 2] = Math.round(keep * base + layer.opacity * layer.rgb[2]);
      } else {
        ov[j] = ov[j + 1] = ov[j + 2] = base;
      }
      ov[j + 3] = 255;
    }
    composed.ct.getContext("2d").putImageData(ctImage, 0, 0);
    composed.overlay.getContext("2d").putImageData(ovImage, 0, 0);
    follow(chosen);
    return chosen;
  }

  // --- Drawing (zoom, pan, one pane or two) -------------------------------------------------

  function panes(split) {
    const w = canvas.width;
    if (!split) return [{ x: 0, width: w, source: "overlay" }];
    const half = Math.floor(w / 2);
    return [
      { x: 0, width: half, source: "ct" },
      { x: half, width: w - half, source: "overlay" },
    ];
  }

  function fitScale(pane, entry) {
    return Math.min(pane.width / entry.width, canvas.height / entry.height);
  }

  function draw() {
    if (!shownEntry) return;
    const split = choices().split;
    const ratio = window.devicePixelRatio || 1;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingEnabled = false;
    let scale = 1;
    panes(split).forEach(function (pane) {
      scale = fitScale(pane, shownEntry) * view.zoom;
      const width = shownEntry.width * scale;
      const height = shownEntry.height * scale;
      const left = Math.round(pane.x + pane.width / 2 + view.panX * ratio - width / 2);
      const top = Math.round(canvas.height / 2 + view.panY * ratio - height / 2);
      context.save();
      context.beginPath();
      context.rect(pane.x, 0, pane.width, canvas.height);
      context.clip();
      context.drawImage(composed[pane.source], left, top, width, height);
      context.restore();
      // Where the last pane (the segmentation) lies, for tests and for the cursor maths.
      canvas.dataset.scale = String(scale);
      canvas.dataset.left = String(left);
      canvas.dataset.top = String(top);
    });
    if (split) {
      context.fillStyle = "#3a434e";
      context.fillRect(Math.floor(canvas.width / 2) - Math.round(ratio), 0, Math.max(1, Math.round(2 * ratio)), canvas.height);
    }
    canvas.dataset.view = split ? "split" : "single";
    canvas.dataset.zoom = String(view.zoom);
    canvas.dataset.panX = String(view.panX);
    canvas.dataset.panY = String(view.panY);
    zoomReadout.textContent = format(strings.zoom, { percent: Math.round((scale / ratio) * 100) + "\u202f%" });
  }

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    draw();
  }

  // --- Showing a slice --------------------------------------------------------------------

  let showing = 0; // a counter: only the latest request draws
  function show() {
    const pos = current;
    const ticket = ++showing;
    const wantHu = Boolean(windowing) && slices[pos].hu;
    Promise.all([load(pos), wantHu ? loadHu(pos) : Promise.resolve(null)])
      .then(function (loaded) {
        if (ticket !== showing) return;
        shownEntry = loaded[0];
        compose(shownEntry, loaded[1]);
        draw();
        showWindow();
        root.dataset.shown = String(slices[pos].index);
        if (frame.dataset.ready !== "true") reveal();
        prefetch();
      })
      .catch(function () {
        if (ticket !== showing) return;
        if (frame.dataset.ready !== "true") {
          frame.dataset.ready = "failed";
          const note = document.createElement("p");
          note.className = "hint";
          note.textContent = strings.unavailable;
          frame.appendChild(note);
        }
      });
  }

  function reveal() {
    fallback.hidden = true;
    canvas.hidden = false;
    document.querySelectorAll("#viewer .viewer-bar, #viewer-help").forEach(function (el) {
      el.hidden = false;
    });
    if (windowControls) windowControls.hidden = false;
    frame.dataset.ready = "true";
    resize();
  }

  function go(pos, fromAddress) {
    const next = Math.max(0, Math.min(total - 1, pos));
    const moved = next !== current;
    current = next;
    const index = slices[current].index;
    position.textContent = format(strings.position, { index: index, total: total });
    if (slider) slider.value = String(index);
    if (openLink) openLink.href = urlOf("page", current);
    if (data.stack && !fromAddress && moved) {
      window.history.replaceState(null, "", "#slice=" + index);
    }
    show();
  }

  function positionOfIndex(index) {
    const k = slices.findIndex(function (s) {
      return s.index === index;
    });
    return k < 0 ? 0 : k;
  }

  function indexFromAddress() {
    const match = /(?:^#|&)slice=(\d+)/.exec(window.location.hash);
    return match ? parseInt(match[1], 10) : null;
  }

  // --- Window / level -------------------------------------------------------------------------

  function setWindow(width, level) {
    windowing = width === null ? null : { width: Math.max(1, Math.round(width)), level: Math.round(level) };
    lut = windowing ? windowLut(windowing.width, windowing.level) : null;
    if (windowControls) {
      windowControls.querySelectorAll("[data-window]").forEach(function (button) {
        const preset = data.windows[button.dataset.window];
        const on = button.dataset.window === "model" ? !windowing : Boolean(windowing) &&
          preset[0] === windowing.width && preset[1] === windowing.level;
        button.setAttribute("aria-pressed", on ? "true" : "false");
      });
    }
    show();
  }

  function showWindow() {
    if (!windowReadout) return;
    const minus = function (v) {
      return String(v).replace("-", "\u2212");
    };
    const wl = windowing || { width: data.windows.model[0], level: data.windows.model[1] };
    windowReadout.textContent = slices[current].hu ? format(strings.window, { width: minus(wl.width), level: minus(wl.level) }) : "";
    root.dataset.window = windowing ? windowing.width + "," + windowing.level : "model";
  }

  if (windowControls) {
    windowControls.addEventListener("click", function (event) {
      const button = event.target.closest("[data-window]");
      if (!button) return;
      if (button.dataset.window === "model") setWindow(null);
      else setWindow(data.windows[button.dataset.window][0], data.windows[button.dataset.window][1]);
    });
  }

  // --- Zoom and pan ---------------------------------------------------------------------------

  // Zoom by `factor` keeping the point (x, y) of the canvas (CSS pixels from its centre
  // of the pane under it) where it is.
  function zoomBy(factor, clientX, clientY) {
    const zoom = Math.max(ZOOM_MIN, Math.min(ZOOM_MAX, view.zoom * factor));
    const applied = zoom / view.zoom;
    if (clientX !== undefined) {
      const rect = canvas.getBoundingClientRect();
      const split = choices().split;
      const paneWidth = split ? rect.width / 2 : rect.width;
      const x = clientX - rect.left;
      const centreX = (split && x >= paneWidth ? paneWidth * 1.5 : paneWidth / 2);
      const dx = x - centreX;
      const dy = clientY - rect.top - rect.height / 2;
      view.panX = dx - (dx - view.panX) * applied;
      view.panY = dy - (dy - view.panY) * applied;
    } else {
      view.panX *= applied;
      view.panY *= applied;
    }
    view.zoom = zoom;
    draw();
  }

  function fit() {
    view = { zoom: 1, panX: 0, panY: 0 };
    draw();
  }

  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomBy(ZOOM_STEP);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomBy(1 / ZOOM_STEP);
  });
  document.getElementById("zoom-fit").addEventListener("click", fit);

  canvas.addEventListener(
    "wheel",
    function (event) {
      const pixels = event.deltaMode === 1 ? event.deltaY * 40 : event.deltaMode === 2 ? event.deltaY * 800 : event.deltaY;
      if (event.ctrlKey || event.metaKey) {
        event.preventDefault();
        zoomBy(Math.exp(-pixels * 0.002), event.clientX, event.clientY);
        return;
      }
      if (total < 2) return; // nothing to move through: let the page scroll
      event.preventDefault();
      if (Math.abs(pixels) >= WHEEL_STEP) {
        wheelRest = 0;
        go(current + Math.sign(pixels));
        return;
      }
      wheelRest += pixels;
      if (Math.abs(wheelRest) >= WHEEL_STEP) {
        go(current + Math.sign(wheelRest));
        wheelRest = 0;
      }
    },
    { passive: false }
  );

  function windowDrag(event) {
    const dragMode = form.ownerDocument.querySelector("input[name='drag']:checked");
    return slices[current].hu && (event.button === 2 || (dragMode && dragMode.value === "window"));
  }

  canvas.addEventListener("pointerdown", function (event) {
    canvas.focus();
    if (event.button !== 0 && event.button !== 2) return;
    const windowed = windowDrag(event);
    const start = windowing || { width: data.windows.model[0], level: data.windows.model[1] };
    drag = { x: event.clientX, y: event.clientY, panX: view.panX, panY: view.panY, window: windowed ? start : null };
    canvas.setPointerCapture(event.pointerId);
    canvas.classList.add("is-dragging");
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (drag.window) {
      setWindow(drag.window.width + dx * WINDOW_PER_PX, drag.window.level + dy * WINDOW_PER_PX);
    } else {
      view.panX = drag.panX + dx;
      view.panY = drag.panY + dy;
      draw();
    }
  });
  function endDrag(event) {
    if (!drag) return;
    drag = null;
    canvas.classList.remove("is-dragging");
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
  }
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("contextmenu", function (event) {
    event.preventDefault(); // right-drag sets the window
  });

  canvas.addEventListener("keydown", function (event) {
    const panKeys = { ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
    if (event.shiftKey && panKeys[event.key]) {
      view.panX += panKeys[event.key][0] * PAN_STEP;
      view.panY += panKeys[event.key][1] * PAN_STEP;
      draw();
    } else if (event.key === "ArrowUp" || event.key === "ArrowLeft") {
      go(current - 1);
    } else if (event.key === "ArrowDown" || event.key === "ArrowRight") {
      go(current + 1);
    } else if (event.key === "PageUp") {
      go(current - 10);
    } else if (event.key === "PageDown") {
      go(current + 10);
    } else if (event.key === "Home") {
      go(0);
    } else if (event.key === "End") {
      go(total - 1);
    } else if (event.key === "+" || event.key === "=") {
      zoomBy(ZOOM_STEP);
    } else if (event.key === "-" || event.key === "_") {
      zoomBy(1 / ZOOM_STEP);
    } else if (event.key === "0") {
      fit();
    } else {
      return;
    }
    event.preventDefault();
  });

  if (slider) {
    slider.addEventListener("input", function () {
      go(positionOfIndex(parseInt(slider.value, 10)));
    });
  }
  window.addEventListener("hashchange", function () {
    const index = indexFromAddress();
    if (index !== null) go(positionOfIndex(index), true);
  });

  // --- The layer controls, and what follows them on the slice page ----------------------------

  function follow(chosen) {
    layerNames.forEach(function (name) {
      const style = chosen.styles[name];
      document.body.style.setProperty("--" + name.replace("_", "-"), style.colour); // legends follow
      const shown = document.getElementById(name + "-opacity-value");
      if (shown) shown.textContent = Math.round(style.opacity * 100) + "\u202f%";
    });
    if (!download) return;
    const overlayQuery = new URLSearchParams();
    layerNames.forEach(function (name) {
      const style = chosen.styles[name];
      overlayQuery.set(name, [style.colour.replace("#", ""), style.opacity, style.visible ? 1 : 0].join(","));
    });
    overlayQuery.set("mask", chosen.maskOnly ? "1" : "0");
    download.href = urlOf("overlay", current) + "?" + overlayQuery.toString();
    if (!touched || data.stack) return;
    const pageQuery = "?" + new URLSearchParams(new FormData(form)).toString();
    window.history.replaceState(null, "", pageQuery + window.location.hash);
    ["previous-slice", "next-slice"].forEach(function (id) {
      const link = document.getElementById(id);
      if (link) link.href = link.href.split("?")[0] + pageQuery;
    });
  }

  function changed(event) {
    touched = true;
    if (event.target.name === "view") {
      view.panX = view.panY = 0;
      draw();
    }
    if (shownEntry) show();
  }
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    show();
  });

  // A narrow screen starts with one image, unless the address chose.
  if (!/[?&]view=/.test(window.location.search) && window.matchMedia("(max-width: 700px)").matches) {
    form.elements.view.value = "single";
  }
  if (window.ResizeObserver) new ResizeObserver(resize).observe(canvas);
  else window.addEventListener("resize", resize);

  const start = indexFromAddress();
  current = -1;
  go(positionOfIndex(start !== null ? start : data.start), true);
})();
