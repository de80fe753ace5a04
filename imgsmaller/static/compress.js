// The compressor page: pick or drop images, upload each to /app/compress (session + CSRF
// header), poll /result/<progress_key>, then show a before/after slider and downloads.
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

  const queue = [];
  const finished = [];
  let active = 0;

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
      queue.push({ file, card, targetSize: targetSize(), output: $("#output").value });
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
    setProgress(card, 0.02, "uploading…");
    let answer;
    try {
      answer = await send(form, (fraction) => setProgress(card, 0.05 + fraction * 0.45, `uploading ${Math.round(fraction * 100)}%`));
    } catch (error) {
      fail(card, error.message);
      return;
    }
    if (typeof answer.remaining_today === "number" && quotaRemaining) {
      // Parallel uploads are answered in any order: the smallest count is the latest one.
      const shown = parseInt(quotaRemaining.textContent, 10);
      quotaRemaining.textContent = Number.isNaN(shown) ? answer.remaining_today : Math.min(shown, answer.remaining_today);
    }
    card.classList.add("working");
    setProgress(card, 0.6, "compressing…");
    await poll(card, file, answer);
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

  async function poll(card, file, answer) {
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
      await showResult(card, file, body);
      return;
    }
    fail(card, "This is taking too long. The result may still appear on your Dashboard.");
  }

  async function showResult(card, file, result) {
    card.classList.remove("working");
    setProgress(card, 1, "done");
    const after = $(".compare-after", card);
    const before = $(".compare-before-img", card);
    const loaded = Promise.all([loadImage(after, `/app/images/${result.image_id}/result`),
                                loadImage(before, `/app/images/${result.image_id}/original`)]);
    const download = $(".result-download", card);
    const link = new URL(result.download, window.location.href);
    download.href = link.pathname + link.search;
    const saved = result.original_bytes ? 100 * (1 - result.bytes / result.original_bytes) : 0;
    $(".sizes", card).textContent = `${formatBytes(result.original_bytes)} → ${formatBytes(result.bytes)} · ${result.format.toUpperCase()} · ${result.width}×${result.height}`;
    const saving = $(".saving", card);
    saving.textContent = saved >= 0 ? `−${saved.toFixed(0)}%` : `+${(-saved).toFixed(0)}%`;
    saving.classList.toggle("worse", saved < 0);
    $(".result-status", card).textContent = "done";
    $(".result-foot", card).hidden = false;
    card.classList.add("done");
    try {
      await loaded;
      fitCompare($(".compare", card), before);
      $(".compare", card).hidden = false;
      $(".progress", card).hidden = true;
    } catch (error) {
      $(".progress", card).hidden = true;
      $(".result-status", card).textContent = "done (preview unavailable)";
    }
    finished.push(result);
    updateSummary();
  }

  // The frame takes the picture's own shape (at most COMPARE_MAX_HEIGHT tall), so the
  // checkerboard shows only through transparent pixels, never around the picture.
  const COMPARE_MAX_HEIGHT = 420;
  function fitCompare(frame, img) {
    const ratio = img.naturalWidth / img.naturalHeight;
    frame.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
    frame.style.width = `min(100%, ${Math.round(COMPARE_MAX_HEIGHT * ratio)}px)`;
  }

  function loadImage(img, src) {
    return new Promise((resolve, reject) => {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", () => reject(new Error(`cannot load ${src}`)), { once: true });
      img.src = src;
    });
  }

  function fail(card, message) {
    card.classList.remove("working");
    card.classList.add("failed");
    $(".progress", card).hidden = true;
    $(".result-status", card).textContent = "failed";
    const error = $(".result-error", card);
    error.textContent = message;
    error.hidden = false;
    resultsBar.hidden = false;
  }

  function updateSummary() {
    const before = finished.reduce((sum, r) => sum + r.original_bytes, 0);
    const after = finished.reduce((sum, r) => sum + r.bytes, 0);
    const saved = before ? Math.round(100 * (1 - after / before)) : 0;
    const count = finished.length;
    summary.textContent = `${count} image${count === 1 ? "" : "s"} · ${formatBytes(before)} → ${formatBytes(after)} · saved ${saved}%`;
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
