// The compressor page: pick or drop images, upload each to /app/compress (session + CSRF
// header), poll /result/<progress_key>, then show a before/after slider, a 1:1 view, the
// result's facts and warnings, and downloads that report an expired result in the card.
"use strict";

(() => {
  const root = document.getElementById("compressor");
  if (!root) return;

  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const maxBytes = Number(root.dataset.maxBytes);
  const PARALLEL_UPLOADS = 2;
  const POLL_MS = 600;
  const POLL_LIMIT_MS = 10 * 60 * 1000;

  const $ = (selector, scope = document) => scope.querySelector(selector);
  const input = $("#file-input");
  const dropzone = $("#dropzone");
  const results = $("#results");
  const resultsBar = $("#results-bar");
  const summary = $("#results-summary");
  const downloadAll = $("#download-all");
  const template = $("#result-template");
  const quotaRemaining = $("#quota-remaining");
  const sizeInput = $("#size-input");
  const targetHint = $("#target-hint");
  const clearButton = $("#clear-results");

  const queue = [];
  let finished = [];
  let active = 0;
  // Parallel uploads answer in any order: the lowest count seen is the newest.
  let lowestRemaining = quotaRemaining ? Number(quotaRemaining.textContent) : Infinity;

  // -- options ---------------------------------------------------------------
  document.querySelectorAll('input[name="target-mode"]').forEach((radio) => {
    radio.addEventListener("change", () => {
      const bySize = targetMode() === "size";
      sizeInput.hidden = !bySize;
      targetHint.textContent = bySize
        ? "Never larger than this, at the best quality that fits."
        : "Near-lossless: the smallest file that still looks the same.";
    });
  });

  function targetMode() {
    return $('input[name="target-mode"]:checked').value;
  }

  function targetSize() {
    if (targetMode() === "auto") return "auto";
    return `${$("#target-number").value}${$("#target-unit").value}`;
  }

  // -- picking and dropping --------------------------------------------------
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  ["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
  }));
  dropzone.addEventListener("drop", (event) => addFiles(event.dataTransfer.files));
  // A screenshot on the clipboard can be pasted straight onto the page.
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.files : [])];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });

  function addFiles(files) {
    for (const file of files) {
      const card = newCard(file);
      if (file.size > maxBytes) {
        fail(card, `This file is larger than the ${formatBytes(maxBytes)} limit.`);
        continue;
      }
      const output = $("#output");
      const metadata = $("#keep-metadata");
      queue.push({ file, card, targetSize: targetSize(), output: output.value,
                   outputLabel: output.options[output.selectedIndex].text,
                   maxWidth: $("#max-width").value.trim(), keepMetadata: metadata.value,
                   metadataLabel: metadata.options[metadata.selectedIndex].text });
    }
    resultsBar.hidden = false;
    pump();
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && queue.length) {
      active += 1;
      upload(queue.shift()).finally(() => { active -= 1; pump(); });
    }
  }

  // -- one image --------------------------------------------------------------
  function newCard(file) {
    const card = template.content.firstElementChild.cloneNode(true);
    $(".result-name", card).textContent = file.name;
    $(".result-status", card).textContent = `${formatBytes(file.size)} · waiting`;
    results.prepend(card);
    const range = $(".compare-range", card);
    range.addEventListener("input", () => setSplit(card, range.value));
    setSplit(card, range.value);
    return card;
  }

  function setSplit(card, percent) {
    $(".compare-before", card).style.clipPath = `inset(0 ${100 - percent}% 0 0)`;
    $(".compare-handle", card).style.left = `${percent}%`;
  }

  function setProgress(card, fraction, label) {
    $(".progress-bar", card).style.width = `${Math.round(fraction * 100)}%`;
    if (label) $(".result-status", card).textContent = label;
  }

  async function upload(item) {
    const { file, card } = item;
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("target_size", item.targetSize);
    form.append("output", item.output);
    // Sent only when chosen: the server checks them (1-10000 pixels) and says what is wrong.
    if (item.maxWidth) form.append("max_width", item.maxWidth);
    if (item.keepMetadata !== "none") form.append("keep_metadata", item.keepMetadata);
    setProgress(card, 0.02, "uploading…");
    let answer;
    try {
      answer = await send(form, (fraction) => setProgress(card, 0.05 + fraction * 0.45, `uploading ${Math.round(fraction * 100)}%`));
    } catch (error) {
      fail(card, error.message);
      return;
    }
    if (typeof answer.remaining_today === "number" && quotaRemaining) {
      lowestRemaining = Math.min(lowestRemaining, answer.remaining_today);
      quotaRemaining.textContent = lowestRemaining;
    }
    card.classList.add("working");
    setProgress(card, 0.6, "compressing…");
    await poll(card, item, answer);
  }

  function send(form, onProgress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/app/compress");
      request.setRequestHeader("X-CSRFToken", csrfToken);
      request.responseType = "json";
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      });
      request.addEventListener("load", () => {
        const body = request.response || {};
        if (request.status === 202) resolve(body);
        else if (request.status === 400 && /CSRF/.test(body.message || "")) {
          // The session changed under this page (a log-in or log-out in another tab).
          reject(new Error("Your session has changed. Reload the page and try again."));
        } else reject(new Error(body.message || `The server answered ${request.status}.`));
      });
      request.addEventListener("error", () => reject(new Error("The upload failed: check your connection and try again.")));
      request.send(form);
    });
  }

  async function poll(card, item, answer) {
    const started = Date.now();
    while (Date.now() - started < POLL_LIMIT_MS) {
      await sleep(POLL_MS);
      let response;
      let body;
      try {
        response = await fetch(answer.result_url, { headers: { Accept: "application/json" } });
        body = await response.json();
      } catch (error) {
        continue; // a dropped poll is retried
      }
      if (!response.ok) {
        fail(card, body.message || `The server answered ${response.status}.`);
        return;
      }
      if (body.status === "processing") continue;
      if (body.status === "failed") {
        fail(card, body.message || "The image could not be processed.");
        return;
      }
      await showResult(card, item, body);
      return;
    }
    fail(card, "This is taking too long. The result may still appear on your Dashboard.");
  }

  async function showResult(card, item, result) {
    card.classList.remove("working");
    setProgress(card, 1, "done");
    const after = $(".compare-after", card);
    const before = $(".compare-before-img", card);
    const loaded = Promise.all([loadImage(card, after, `/app/images/${result.image_id}/result`),
                                loadImage(card, before, `/app/images/${result.image_id}/original`)]);
    const download = $(".result-download", card);
    const link = new URL(result.download, window.location.href);
    download.href = link.pathname + link.search;
    download.addEventListener("click", (event) => { event.preventDefault(); downloadResult(card, download); });
    const saved = result.original_bytes ? 100 * (1 - result.bytes / result.original_bytes) : 0;
    $(".sizes", card).textContent = `${formatBytes(result.original_bytes)} → ${formatBytes(result.bytes)} · ${result.format.toUpperCase()} · ${result.width}×${result.height}`;
    const asked = [describeTarget(item.targetSize), item.outputLabel];
    if (item.maxWidth) asked.push(`at most ${item.maxWidth} px wide`);
    if (item.keepMetadata !== "none") asked.push(`metadata: ${item.metadataLabel.toLowerCase()}`);
    $(".result-settings", card).textContent = `Asked: ${asked.join(" · ")}`;
    $(".result-quality", card).textContent = describeQuality(result.quality_score);
    const saving = $(".saving", card);
    // Rounded towards zero: a 99.6 % saving is not "100 %", a 0.4 % growth is still "+1 %".
    saving.textContent = saved >= 0 ? `−${Math.floor(saved)}%` : `+${Math.ceil(-saved)}%`;
    saving.classList.toggle("worse", saved < 0);
    showWarnings(card, result, saved);
    $(".result-status", card).textContent = "done";
    $(".result-foot", card).hidden = false;
    card.classList.add("done");
    try {
      await loaded;
      fitCompare($(".compare", card), before);
      $(".compare", card).hidden = false;
      $(".progress", card).hidden = true;
      setUpZoom(card);
    } catch (error) {
      $(".progress", card).hidden = true;
      $(".zoom-open", card).hidden = true;
      $(".result-status", card).textContent = "done (preview unavailable)";
    }
    finished.push(result);
    updateSummary();
  }

  function describeTarget(target) {
    return target === "auto" ? "Auto (looks the same)" : `at most ${target.replace(/(KB|MB)$/, " $1")}`;
  }

  // SSIMULACRA2 bands (docs/engine.md): what a score means to a person looking at 1:1.
  const QUALITY_WORDS = [[90, "visually lossless"], [80, "looks identical"], [70, "high quality"],
                         [50, "medium quality"], [30, "low quality"]];
  function describeQuality(score) {
    if (typeof score !== "number") return "";
    const band = QUALITY_WORDS.find(([floor]) => score >= floor);
    return `${band ? band[1] : "very low quality"} · ${Math.round(score)}`;
  }

  function showWarnings(card, result, saved) {
    const warnings = Array.isArray(result.warnings) ? [...result.warnings] : [];
    const resized = result.original_width && (result.width !== result.original_width || result.height !== result.original_height);
    if (resized) {
      const note = $(".result-resized", card);
      note.textContent = `resized from ${result.original_width}×${result.original_height} to ${result.width}×${result.height}`;
      note.hidden = false;
    }
    if (saved < 0 && !warnings.length) {
      warnings.push(`This result is ${(-saved).toFixed(0)}% larger than the upload.`);
    }
    const list = $(".result-warnings", card);
    list.replaceChildren(...warnings.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
    list.hidden = warnings.length === 0;
  }

  // Fetched, not navigated to: an expired or deleted result says so in its card, and the
  // other cards stay on the page.
  async function downloadResult(card, link) {
    link.classList.add("busy");
    try {
      const response = await fetch(link.href, { headers: { Accept: "application/json" } });
      if (!response.ok) {
        let message = `The server answered ${response.status}.`;
        try { message = (await response.json()).message || message; } catch (error) { /* not JSON */ }
        showError(card, message);
        if (response.status === 410) link.hidden = true;
        return;
      }
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const save = Object.assign(document.createElement("a"), { href: url, download: fileName(response) });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      showError(card, "The download failed: check your connection and try again.");
    } finally {
      link.classList.remove("busy");
    }
  }

  function fileName(response) {
    const header = response.headers.get("Content-Disposition") || "";
    const encoded = /filename\*=UTF-8''([^;]+)/i.exec(header);
    if (encoded) return decodeURIComponent(encoded[1]);
    const plain = /filename="?([^";]+)"?/i.exec(header);
    return plain ? plain[1] : "image";
  }

  // -- 1:1 view: both pictures at the original's pixel size, one at a time --------------
  function setUpZoom(card) {
    const zoom = $(".zoom", card);
    const original = $(".zoom-original", card);
    const compressed = $(".zoom-result", card);
    const source = $(".compare-before-img", card);
    original.src = source.src;
    compressed.src = $(".compare-after", card).src;
    // A downscaled result is shown scaled back up, the way its quality score was measured.
    [original, compressed].forEach((img) => { img.style.width = `${source.naturalWidth}px`; });
    $(".zoom-open", card).addEventListener("click", () => {
      const opening = zoom.hidden;
      zoom.hidden = !opening;
      $(".compare", card).hidden = opening;
      if (opening) {
        const view = $(".zoom-view", card);
        view.scrollLeft = (view.scrollWidth - view.clientWidth) / 2;
        view.scrollTop = (view.scrollHeight - view.clientHeight) / 2;
      }
    });
    $(".zoom-close", card).addEventListener("click", () => { zoom.hidden = true; $(".compare", card).hidden = false; });
    card.querySelectorAll(".zoom-show").forEach((button) => button.addEventListener("click", () => {
      const showOriginal = button.dataset.show === "original";
      original.hidden = !showOriginal;
      compressed.hidden = showOriginal;
      card.querySelectorAll(".zoom-show").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    }));
  }

  // The frame takes the picture's own shape (at most COMPARE_MAX_HEIGHT tall), so the
  // checkerboard shows only through transparent pixels, never around the picture.
  const COMPARE_MAX_HEIGHT = 420;
  function fitCompare(frame, img) {
    const ratio = img.naturalWidth / img.naturalHeight;
    frame.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
    frame.style.width = `min(100%, ${Math.round(COMPARE_MAX_HEIGHT * ratio)}px)`;
  }

  // Fetched once into a blob: the slider and the 1:1 view share it (the server says no-store).
  async function loadImage(card, img, src) {
    const response = await fetch(src);
    if (!response.ok) throw new Error(`cannot load ${src}`);
    const url = URL.createObjectURL(await response.blob());
    (card.blobUrls = card.blobUrls || []).push(url);
    await new Promise((resolve, reject) => {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", () => reject(new Error(`cannot show ${src}`)), { once: true });
      img.src = url;
    });
  }

  function fail(card, message) {
    card.classList.remove("working");
    card.classList.add("failed");
    $(".progress", card).hidden = true;
    $(".result-status", card).textContent = "failed";
    showError(card, message);
    resultsBar.hidden = false;
  }

  function showError(card, message) {
    const error = $(".result-error", card);
    error.textContent = message;
    error.hidden = false;
  }

  // Clear: finished and failed cards go; images still on their way stay.
  clearButton.addEventListener("click", () => {
    results.querySelectorAll(".result.done, .result.failed").forEach((card) => {
      (card.blobUrls || []).forEach((url) => URL.revokeObjectURL(url));
      card.remove();
    });
    finished = [];
    updateSummary();
    resultsBar.hidden = results.children.length === 0;
  });

  function updateSummary() {
    const before = finished.reduce((sum, r) => sum + r.original_bytes, 0);
    const after = finished.reduce((sum, r) => sum + r.bytes, 0);
    const saved = before ? Math.round(100 * (1 - after / before)) : 0;
    const count = finished.length;
    summary.textContent = count === 0 ? "" : `${count} image${count === 1 ? "" : "s"} · ${formatBytes(before)} → ${formatBytes(after)} · saved ${saved}%`;
    const query = new URLSearchParams();
    finished.forEach((r) => query.append("id", r.image_id));
    downloadAll.href = `/app/download-all?${query}`;
    downloadAll.hidden = count < 2;
  }

  // -- helpers ------------------------------------------------------------------
  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
  }
})();
