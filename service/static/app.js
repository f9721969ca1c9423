// vqserve page: show and edit the discrete codes of a VQ autoencoder.
//
// Plain JavaScript with no build step and no third-party code, so the page works offline and shows how a client
// uses the public API: GET /models, GET /models/{name}/codebook/colors, POST /encode, POST /reconstruct,
// POST /decode and, for models with a prior, POST /generate and POST /complete, nothing else. downloads.js (loaded
// first) builds the files the page offers for download.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // ModelInfo objects from GET /models
  image: null, // {blob, name, url}: what the user picked
  result: null, // {model, indices, shape: [h, w], imageSize: [H, W], codebookSize, factor, channels, psnr, generated}
  edited: null, // a copy of result.indices that the user changes
  counts: null, // Int32Array(K): cells per code in `edited`
  painted: null, // Uint8Array(h * w): 1 where the user set a code since the grid was shown: /complete's mask
  editSerial: 0, // counts changes to `edited`, so that a /complete reply for an older grid is not applied
  generated: null, // {model, seed, shape, samples: [{indices, image}]}: what the Generate panel drew
  genRun: 0, // a newer Generate (or another model) makes older samples' replies stale
  genAbort: null,
  selected: null, // [row, col] of the selected cell
  hover: null, // [row, col] under the pointer
  baseMap: null, // offscreen canvas with one filled square per cell; overlays are drawn on top of it
  painting: false,
  runId: 0, // a newer run makes older replies stale
  decodeAbort: null,
  decodeMs: null,
  times: {},
  completing: false, // a POST /complete is on its way
  completion: null, // {seed, mask} of the last completion applied (its seed is shown: it may be a random one)
  urls: [], // object URLs to revoke when replaced
  palettes: new Map(), // model name -> a CSS colour per code (GET /models/{name}/codebook/colors), fetched once
  palette: null, // the current result's model's palette
  originalPixels: null, // the picked image as the model sees it (alpha over white; luma for 1 channel)
  reconstruction: null, // the PNG blob of POST /reconstruct
  decoded: null, // the PNG blob of the last POST /decode of the edited grid
  psnrEdited: null, // dB of the last decode of the edited grid against the original, computed here
  decodeFailed: false, // the last decode of the edited grid failed: its picture is stale
};

// ---------------------------------------------------------------------------------------------- API

class ApiError extends Error {}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch with the service's JSON error body turned into a readable message; the time includes the body
async function call(path, options, read) {
  const started = performance.now();
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error) message = `${body.error.message} (${body.error.code}, HTTP ${response.status})`;
    } catch (_) {
      // not JSON: keep the status line
    }
    if (response.status === 401) message += ". Set the API key under the samples.";
    throw new ApiError(message);
  }
  const data = await read(response);
  return { data, response, ms: performance.now() - started };
}

const readJSON = (response) => response.json();
const readBlob = (response) => response.blob();

function modelQuery(name) {
  return `model=${encodeURIComponent(name)}`;
}

// ---------------------------------------------------------------------------------------------- status

function setStatus(text, busy) {
  $("status").textContent = text;
  document.body.dataset.state = busy ? "busy" : "ready";
}

function errorText(error) {
  return error instanceof ApiError ? error.message : `Something went wrong: ${error.message || error}`;
}

// a failed run: the message, and no result of an earlier image or model left under it
function showError(error) {
  discardResult();
  showMessage(error);
}

function showMessage(error) {
  const box = $("error");
  box.textContent = errorText(error);
  box.hidden = false;
  document.body.dataset.state = "error";
  $("status").textContent = "";
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// a failed decode of the edited grid: the grid and the first results still hold, the decoded picture does not
function showDecodeError(error) {
  state.decodeFailed = true;
  state.psnrEdited = null;
  markDecodeStale();
  showStats();
  showMessage(error);
}

function markDecodeStale() {
  $("edited").classList.toggle("stale", state.decodeFailed);
  $("edited-stale").hidden = !state.decodeFailed;
  $("download-decoded").disabled = state.decodeFailed || !state.decoded;
}

// a code the user typed that cannot be applied: said next to the editor, the results are untouched
function showEditError(text, invalidCode = true) {
  $("edit-error").textContent = text;
  $("edit-error").hidden = false;
  if (invalidCode) $("code").setAttribute("aria-invalid", "true");
}

function clearEditError() {
  $("edit-error").hidden = true;
  $("edit-error").textContent = "";
  $("code").removeAttribute("aria-invalid");
}

// forget the shown result, so that nothing on screen describes an input other than the current one
function discardResult() {
  state.runId += 1; // replies still on their way belong to the discarded run
  if (state.decodeAbort) state.decodeAbort.abort();
  state.result = null;
  state.edited = null;
  state.counts = null;
  state.selected = null;
  state.hover = null;
  state.reconstruction = null;
  state.decoded = null;
  state.psnrEdited = null;
  state.decodeFailed = false;
  $("results").hidden = true;
  $("results").classList.remove("stale");
  $("editor").hidden = true;
  $("original").removeAttribute("src");
  $("reconstruction").removeAttribute("src");
  releaseURLs();
}

function objectURL(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

function releaseURLs() {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
}

// ---------------------------------------------------------------------------------------------- models

async function loadModels() {
  try {
    const { data } = await call("/models", { method: "GET" }, readJSON);
    state.models = data.models;
    const select = $("model");
    const previous = select.value;
    select.replaceChildren();
    for (const info of state.models) {
      const option = document.createElement("option");
      option.value = info.name;
      const kind = info.in_channels === 1 ? "grayscale" : "RGB";
      option.textContent = `${info.name} (${kind}, ${info.codebook_size} codes)`;
      select.append(option);
    }
    if (state.models.some((m) => m.name === previous)) select.value = previous;
    select.disabled = state.models.length === 0;
    describeModel();
    const next = state.models.length ? "Pick an image." : "The server serves no model yet; try again shortly.";
    setStatus(next, false);
  } catch (error) {
    showError(error);
  }
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || state.models[0];
}

function describeModel() {
  const info = currentModel();
  if (!info) return;
  const bits = Math.log2(info.codebook_size);
  $("model-info").textContent =
    `downsample ×${info.downsample_factor}, ${info.codebook_size} codes (${fmt(bits, 2)} bits each), ` +
    `${info.device} ${info.dtype}`;
  $("code").max = String(info.codebook_size - 1);
  showGeneratePanel(info);
}

// ---------------------------------------------------------------------------------------------- run

async function pickImage(blob, name) {
  state.image = { blob, name };
  await run();
}

// encode (indices), reconstruct (image + PSNR), then decode the untouched grid: the edit view's starting point
async function run() {
  const info = currentModel();
  if (!state.image || !info) return;
  const id = ++state.runId;
  clearError();
  clearEditError();
  if (state.decodeAbort) state.decodeAbort.abort();
  $("results").classList.add("stale"); // what is shown belongs to the previous input until this run ends
  const { blob, name } = state.image;
  const body = { method: "POST", body: blob };
  const type = blob.type || "application/octet-stream";
  try {
    setStatus(`Encoding ${name} with ${info.name}…`, true);
    const palette = await codebookPalette(info.name);
    if (id !== state.runId) return;
    const encoded = await call(
      `/encode?${modelQuery(info.name)}`,
      { ...body, headers: { "Content-Type": type, Accept: "application/json" } },
      readJSON,
    );
    if (id !== state.runId) return;
    setStatus(`Reconstructing ${name}…`, true);
    const rebuilt = await call(
      `/reconstruct?${modelQuery(info.name)}`,
      { ...body, headers: { "Content-Type": type, Accept: "image/png" } },
      readBlob,
    );
    if (id !== state.runId) return;
    const originalPixels = await modelPixels(blob, info.in_channels);
    if (id !== state.runId) return;

    const data = encoded.data;
    const result = {
      model: info.name,
      indices: data.indices,
      shape: data.shape,
      imageSize: data.image_size,
      codebookSize: data.codebook_size,
      factor: info.downsample_factor,
      channels: info.in_channels,
      psnr: Number.parseFloat(rebuilt.response.headers.get("x-psnr")),
      generated: false,
    };
    const times = { encode: encoded.ms, reconstruct: rebuilt.ms };
    showResult(result, { blob, reconstruction: rebuilt.data, palette, originalPixels, times });
    await decodeEdited(id);
  } catch (error) {
    if (id === state.runId && error.name !== "AbortError") showError(error);
  }
}

// show a code grid and the picture it came from (an encoded image, or a generated sample) and open the editor
function showResult(result, { blob, reconstruction, palette, originalPixels, times }) {
  releaseURLs();
  state.result = result;
  state.edited = result.indices.map((row) => row.slice());
  state.painted = new Uint8Array(result.shape[0] * result.shape[1]);
  state.completion = null;
  state.editSerial += 1;
  state.selected = null;
  state.hover = null;
  state.palette = palette;
  state.originalPixels = originalPixels;
  state.reconstruction = reconstruction;
  state.decoded = null;
  state.psnrEdited = null;
  state.decodeFailed = false;
  markDecodeStale();
  state.times = times;
  $("original").src = objectURL(blob);
  $("reconstruction").src = objectURL(reconstruction);
  $("reconstruction-source").textContent = result.generated ? "(/generate)" : "(/reconstruct)";
  $("results").hidden = false;
  $("results").classList.remove("stale");
  $("editor").hidden = false;
  $("code").max = String(result.codebookSize - 1);
  recount();
  drawBaseMap();
  drawCodeMap();
  drawHistogram();
  showStats();
  updateEditInfo();
}

// POST /decode with the edited grid as JSON indices, cropped to the original size; stale replies are dropped
async function decodeEdited(id = state.runId) {
  const result = state.result;
  if (!result) return;
  if (state.decodeAbort) state.decodeAbort.abort();
  const abort = new AbortController();
  state.decodeAbort = abort;
  setStatus("Decoding the code grid…", true);
  try {
    const decoded = await call(
      `/decode?${modelQuery(result.model)}`,
      {
        method: "POST",
        signal: abort.signal,
        headers: { "Content-Type": "application/json", Accept: "image/png" },
        body: JSON.stringify({ indices: state.edited, image_size: result.imageSize }),
      },
      readBlob,
    );
    const bitmap = await createImageBitmap(decoded.data);
    if (id !== state.runId || abort.signal.aborted) return;
    const canvas = $("edited");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    state.times.decode = decoded.ms;
    state.decoded = decoded.data;
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
    state.psnrEdited = psnr(state.originalPixels, modelView(pixels, result.channels));
    if (state.decodeFailed) clearError();
    state.decodeFailed = false;
    markDecodeStale();
    canvas.dataset.decodes = String(Number(canvas.dataset.decodes) + 1);
    showStats();
    const edits = countEdits();
    setStatus(edits ? `Decoded the grid with ${edits} edited cell${edits === 1 ? "" : "s"}.` : "Done.", false);
  } catch (error) {
    if (error.name !== "AbortError" && id === state.runId) showDecodeError(error);
  }
}

// ---------------------------------------------------------------------------------------------- numbers

function fmt(value, digits) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// the page's PSNR of the edited grid's decode uses the service's definition (model/pixels.py): 8-bit pixels of the
// image as the model reads it, alpha composited on white, one channel (ITU-R 601 luma, as Pillow's "L") for
// grayscale models. On the untouched grid it matches the PSNR /reconstruct reports.
async function modelPixels(blob, channels) {
  const bitmap = await createImageBitmap(blob);
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return modelView(ctx.getImageData(0, 0, canvas.width, canvas.height), channels);
}

function modelView(imageData, channels) {
  const { data, width, height } = imageData;
  const out = new Uint8Array(width * height * channels);
  for (let p = 0, q = 0; p < data.length; p += 4) {
    const a = data[p + 3];
    const over = (v) => Math.round((v * a + 255 * (255 - a)) / 255);
    const [r, g, b] = [over(data[p]), over(data[p + 1]), over(data[p + 2])];
    if (channels === 1) {
      out[q++] = Math.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536); // Pillow's L conversion
    } else {
      out[q++] = r;
      out[q++] = g;
      out[q++] = b;
    }
  }
  return { data: out, width, height };
}

function psnr(reference, test) {
  if (!reference || reference.width !== test.width || reference.height !== test.height) return null;
  let sum = 0;
  for (let i = 0; i < reference.data.length; i += 1) {
    const d = reference.data[i] - test.data[i];
    sum += d * d;
  }
  const mse = sum / reference.data.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

function recount() {
  const counts = new Int32Array(state.result.codebookSize);
  for (const row of state.edited) for (const code of row) counts[code] += 1;
  state.counts = counts;
}

function countEdits() {
  const original = state.result.indices;
  let edits = 0;
  state.edited.forEach((row, r) => row.forEach((code, c) => (edits += code !== original[r][c] ? 1 : 0)));
  return edits;
}

function showStats() {
  const r = state.result;
  const [h, w] = r.shape;
  const [H, W] = r.imageSize;
  const bitsPerCode = Math.log2(r.codebookSize);
  const bpp = (bitsPerCode * h * w) / (H * W);
  const raw = 8 * r.channels;
  const edits = countEdits();
  $("stat-psnr").textContent = r.generated ? "none: a generated sample has no original" : `${fmt(r.psnr, 2)} dB`;
  $("psnr-edited-row").hidden = edits === 0;
  $("stat-psnr-edited").textContent = state.psnrEdited === null ? "–" : `${fmt(state.psnrEdited, 2)} dB`;
  $("used-label").textContent = `Codes used (${edits ? "edited" : "original"} grid)`;
  $("stat-grid").textContent = `${h} × ${w} codes for ${H} × ${W} px (×${r.factor})`;
  $("stat-bpp").textContent = `${fmt(bpp, 3)} (${fmt(raw / bpp, 1)}× smaller than ${raw}-bit pixels)`;
  let used = 0;
  let entropy = 0;
  const cells = h * w;
  for (const n of state.counts) {
    if (n === 0) continue;
    used += 1;
    entropy -= (n / cells) * Math.log2(n / cells);
  }
  $("stat-used").textContent =
    `${used} of ${r.codebookSize} (${fmt((100 * used) / r.codebookSize, 1)}%), ` +
    `perplexity ${fmt(2 ** entropy, 1)}`;
  const t = state.times;
  const steps = ["encode", "reconstruct", "generate", "complete", "decode"].filter((k) => t[k] !== undefined);
  const parts = steps.map((k) => `${k} ${fmt(t[k], 0)} ms`);
  $("stat-time").textContent = parts.join(" · ");
  $("original-size").textContent = `(${W} × ${H})`;
}

// ---------------------------------------------------------------------------------------------- colours

// a colour per code from the service: the code vector's first three principal components as RGB, so that codes
// that are alike look alike and the map shows the structure the codes carry (a colour per index shows noise)
async function codebookPalette(model) {
  let palette = state.palettes.get(model);
  if (palette === undefined) {
    const path = `/models/${encodeURIComponent(model)}/codebook/colors`;
    const { data } = await call(path, { method: "GET" }, readJSON);
    palette = data.colors.map(([r, g, b]) => `rgb(${r} ${g} ${b})`);
    state.palettes.set(model, palette);
  }
  return palette;
}

function codeColour(code) {
  return state.palette[code];
}

// ---------------------------------------------------------------------------------------------- code map

function cellSize() {
  const [h, w] = state.result.shape;
  return Math.max(4, Math.ceil(384 / Math.max(h, w)));
}

function drawBaseMap() {
  const [h, w] = state.result.shape;
  const s = cellSize();
  const base = state.baseMap || document.createElement("canvas");
  base.width = w * s;
  base.height = h * s;
  const ctx = base.getContext("2d");
  for (let r = 0; r < h; r += 1) {
    for (let c = 0; c < w; c += 1) paintCell(ctx, r, c, s);
  }
  state.baseMap = base;
}

function paintCell(ctx, r, c, s) {
  const code = state.edited[r][c];
  ctx.fillStyle = codeColour(code);
  ctx.fillRect(c * s, r * s, s, s);
  if (code !== state.result.indices[r][c] && s >= 6) {
    // a small white corner marks an edited cell
    ctx.fillStyle = "#fff";
    ctx.fillRect(c * s, r * s, Math.ceil(s / 3), Math.ceil(s / 3));
  }
}

function drawCodeMap() {
  const canvas = $("codemap");
  const base = state.baseMap;
  if (canvas.width !== base.width || canvas.height !== base.height) {
    canvas.width = base.width;
    canvas.height = base.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.drawImage(base, 0, 0);
  const s = cellSize();
  const outline = (cell, dashed) => {
    if (!cell) return;
    const [r, c] = cell;
    const size = tool() === "paint" && dashed ? brushSize() : 1;
    const half = Math.floor(size / 2);
    const x = (c - half) * s;
    const y = (r - half) * s;
    ctx.setLineDash(dashed ? [3, 2] : []);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#000";
    ctx.strokeRect(x + 1, y + 1, size * s - 2, size * s - 2);
    ctx.strokeStyle = "#fff";
    ctx.strokeRect(x - 1, y - 1, size * s + 2, size * s + 2);
  };
  outlineRegion(ctx, s);
  outline(state.selected, false);
  outline(state.hover, true);
  ctx.setLineDash([]);
}

// for a model with a prior, the painted cells (what Complete redraws) get a dashed border around their region
function outlineRegion(ctx, s) {
  if (!state.painted.includes(1) || !modelInfo(state.result.model)?.prior) return;
  const [h, w] = state.result.shape;
  const painted = (r, c) => r >= 0 && c >= 0 && r < h && c < w && state.painted[r * w + c] === 1;
  ctx.beginPath();
  for (let r = 0; r < h; r += 1) {
    for (let c = 0; c < w; c += 1) {
      if (!painted(r, c)) continue;
      const [x, y] = [c * s, r * s];
      const edges = [
        [!painted(r - 1, c), x, y, x + s, y],
        [!painted(r + 1, c), x, y + s, x + s, y + s],
        [!painted(r, c - 1), x, y, x, y + s],
        [!painted(r, c + 1), x + s, y, x + s, y + s],
      ];
      for (const [open, x0, y0, x1, y1] of edges) {
        if (!open) continue;
        ctx.moveTo(x0, y0);
        ctx.lineTo(x1, y1);
      }
    }
  }
  ctx.lineWidth = 2;
  ctx.setLineDash([4, 4]);
  ctx.strokeStyle = "#000";
  ctx.lineDashOffset = 0;
  ctx.stroke();
  ctx.strokeStyle = "#fff";
  ctx.lineDashOffset = 4;
  ctx.stroke();
  ctx.lineDashOffset = 0;
}

function cellAt(event) {
  const canvas = $("codemap");
  const rect = canvas.getBoundingClientRect();
  const [h, w] = state.result.shape;
  const c = Math.floor(((event.clientX - rect.left) / rect.width) * w);
  const r = Math.floor(((event.clientY - rect.top) / rect.height) * h);
  return r >= 0 && c >= 0 && r < h && c < w ? [r, c] : null;
}

function describeCell(cell) {
  const [r, c] = cell;
  const code = state.edited[r][c];
  const original = state.result.indices[r][c];
  const f = state.result.factor;
  const was = code !== original ? `, was ${original}` : "";
  return (
    `row ${r}, col ${c} (x ${c * f}–${c * f + f - 1}, y ${r * f}–${r * f + f - 1}): ` +
    `code ${code}${was}, used ${state.counts[code]}×`
  );
}

function tool() {
  return document.querySelector('input[name="tool"]:checked').value;
}

function brushSize() {
  return Number($("brush").value);
}

function brushCode() {
  const value = Number($("code").value);
  const size = state.result.codebookSize;
  if (!Number.isInteger(value) || value < 0 || value >= size) {
    showEditError(`The code must be a whole number from 0 to ${size - 1}.`);
    return null;
  }
  clearEditError();
  return value;
}

// set cells to a code; returns whether anything changed (so a no-op click does not cost a decode)
function setCells(centre, size, code) {
  const [h, w] = state.result.shape;
  const half = Math.floor(size / 2);
  const ctx = state.baseMap.getContext("2d");
  const s = cellSize();
  let changed = false;
  for (let r = centre[0] - half; r <= centre[0] + half; r += 1) {
    for (let c = centre[1] - half; c <= centre[1] + half; c += 1) {
      if (r < 0 || c < 0 || r >= h || c >= w) continue;
      state.painted[r * w + c] = 1; // painted with the code it had still counts as painted (for /complete)
      if (state.edited[r][c] === code) continue;
      state.counts[state.edited[r][c]] -= 1;
      state.counts[code] += 1;
      state.edited[r][c] = code;
      paintCell(ctx, r, c, s);
      changed = true;
    }
  }
  if (changed) state.editSerial += 1;
  updateCompleteButton();
  return changed;
}

function select(cell) {
  state.selected = cell;
  if (cell) $("code").value = String(state.edited[cell[0]][cell[1]]);
  updateEditInfo();
  drawCodeMap();
}

function updateEditInfo() {
  const edits = state.result ? countEdits() : 0;
  const where = state.selected ? `selected ${describeCell(state.selected)}` : "no cell selected";
  const prior = state.result && modelInfo(state.result.model)?.prior;
  const painted = prior && state.painted ? state.painted.reduce((n, v) => n + v, 0) : 0;
  const region = painted ? ` ${painted} painted (the region Complete redraws).` : "";
  const completed = state.completion ? ` Last completion: seed ${state.completion.seed}.` : "";
  $("edit-info").textContent = `${where}. ${edits} cell${edits === 1 ? "" : "s"} edited.${region}${completed}`;
  $("apply").disabled = !state.selected;
  $("apply").textContent = applyLabel();
  $("reset").disabled = edits === 0 && !(state.painted && state.painted.includes(1));
  updateCompleteButton();
}

// what the Apply button does in the current tool: set the selected cell, or stamp the brush centred on it
function applyLabel() {
  if (tool() === "select") return "Apply to selected cell";
  const size = brushSize();
  return size === 1 ? "Paint the selected cell" : `Paint ${size}×${size} around the selected cell`;
}

function afterEdit() {
  state.psnrEdited = null; // until the edited grid is decoded again
  state.decoded = null;
  markDecodeStale();
  drawCodeMap();
  drawHistogram();
  showStats();
  updateEditInfo();
  decodeEdited();
}

function onMapDown(event) {
  if (!state.result) return;
  const cell = cellAt(event);
  if (!cell) return;
  event.preventDefault();
  $("codemap").focus();
  if (tool() === "select") {
    select(cell);
    return;
  }
  const code = brushCode();
  if (code === null) return;
  state.painting = { code, changed: setCells(cell, brushSize(), code) };
  $("codemap").setPointerCapture(event.pointerId);
  drawCodeMap();
}

function onMapMove(event) {
  if (!state.result) return;
  const cell = cellAt(event);
  state.hover = cell;
  $("hover").textContent = cell ? describeCell(cell) : "point at a cell";
  if (state.painting && cell && setCells(cell, brushSize(), state.painting.code)) state.painting.changed = true;
  drawCodeMap();
}

function onMapUp() {
  if (!state.painting) return;
  const { changed } = state.painting;
  state.painting = false;
  if (changed) afterEdit();
}

function onMapLeave() {
  state.hover = null;
  $("hover").textContent = "point at a cell";
  if (state.result) drawCodeMap();
}

function onMapKey(event) {
  if (!state.result) return;
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  const [h, w] = state.result.shape;
  if (moves[event.key]) {
    event.preventDefault();
    const [r, c] = state.selected || [0, 0];
    const [dr, dc] = state.selected ? moves[event.key] : [0, 0];
    select([Math.min(h - 1, Math.max(0, r + dr)), Math.min(w - 1, Math.max(0, c + dc))]);
    $("hover").textContent = describeCell(state.selected);
  } else if (event.key === "Enter" && state.selected) {
    event.preventDefault();
    $("code").focus();
    $("code").select();
  }
}

function onApply(event) {
  event.preventDefault();
  if (!state.result) return;
  const code = brushCode();
  if (code === null) return;
  const cell = state.selected;
  if (tool() === "select" && cell && setCells(cell, 1, code)) afterEdit();
  else if (tool() === "paint" && cell && setCells(cell, brushSize(), code)) afterEdit();
}

function onReset() {
  if (!state.result) return;
  state.edited = state.result.indices.map((row) => row.slice());
  state.painted.fill(0);
  state.completion = null;
  state.editSerial += 1;
  recount();
  drawBaseMap();
  afterEdit();
}

function onRandomCode() {
  const size = state.result ? state.result.codebookSize : currentModel()?.codebook_size;
  if (!size) return;
  $("code").value = String(Math.floor(Math.random() * size));
}

// ---------------------------------------------------------------------------------------------- histogram

function histogramBins() {
  const K = state.result.codebookSize;
  const bins = Math.min(K, 512);
  return { K, bins, per: K / bins };
}

function drawHistogram() {
  const canvas = $("histogram");
  const ctx = canvas.getContext("2d");
  const { K, bins, per } = histogramBins();
  const sums = new Float64Array(bins);
  for (let k = 0; k < K; k += 1) sums[Math.floor(k / per)] += state.counts[k];
  const log = histogramScale() === "log";
  const scale = log ? Math.log1p : (n) => n;
  const peak = scale(Math.max(1, ...sums));
  const { width, height } = canvas;
  const styles = getComputedStyle(document.documentElement);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = styles.getPropertyValue("--line");
  ctx.fillRect(0, height - 1, width, 1);
  const barWidth = width / bins;
  for (let b = 0; b < bins; b += 1) {
    if (sums[b] === 0) continue;
    const barHeight = Math.max(2, (scale(sums[b]) / peak) * (height - 8));
    ctx.fillStyle = per === 1 ? codeColour(b) : styles.getPropertyValue("--accent");
    ctx.fillRect(b * barWidth, height - barHeight, Math.max(1, barWidth - (barWidth > 3 ? 1 : 0)), barHeight);
  }
  canvas.setAttribute(
    "aria-label",
    `Codebook usage: cells per code for ${K} codes` +
      (per > 1 ? `, ${per} codes per bar` : "") +
      `, ${log ? "logarithmic" : "linear"} scale`,
  );
  canvas.dataset.scale = log ? "log" : "linear";
}

// log by default: after painting one code over a region, a linear scale flattens every other bar
function histogramScale() {
  return document.querySelector('input[name="hist-scale"]:checked').value;
}

function binAt(event) {
  const canvas = $("histogram");
  const rect = canvas.getBoundingClientRect();
  const { bins } = histogramBins();
  const b = Math.floor(((event.clientX - rect.left) / rect.width) * bins);
  return b >= 0 && b < bins ? b : null;
}

// the codes of one bar and the most used of them (the one a click picks)
function binCodes(b) {
  const { per } = histogramBins();
  const first = Math.ceil(b * per); // the codes k with floor(k / per) === b, as drawHistogram bins them
  const last = Math.ceil((b + 1) * per) - 1;
  let best = first;
  let total = 0;
  for (let k = first; k <= last; k += 1) {
    total += state.counts[k];
    if (state.counts[k] > state.counts[best]) best = k;
  }
  return { first, last, best, total };
}

function onHistogramMove(event) {
  if (!state.result) return;
  const b = binAt(event);
  if (b === null) return;
  const { first, last, best, total } = binCodes(b);
  $("hist-info").textContent =
    first === last
      ? `code ${first}: ${total} cell${total === 1 ? "" : "s"}`
      : `codes ${first}–${last}: ${total} cells; most used ${best} (${state.counts[best]})`;
}

function onHistogramClick(event) {
  if (!state.result) return;
  const b = binAt(event);
  if (b === null) return;
  $("code").value = String(binCodes(b).best);
  document.querySelector('input[name="tool"][value="paint"]').checked = true;
  updateEditInfo();
}

// ---------------------------------------------------------------------------------------------- prior

function modelInfo(name) {
  return state.models.find((m) => m.name === name);
}

// the Generate panel belongs to the selected model: shown only when it has a prior, with that prior's classes;
// samples drawn from another model go (and a draw still on its way is abandoned)
function showGeneratePanel(info) {
  const prior = info && info.prior;
  if (state.generated && (!info || state.generated.model !== info.name)) clearSamples();
  $("generate").hidden = !prior;
  if (!prior) return;
  const select = $("gen-label");
  const previous = select.value;
  const any = document.createElement("option");
  any.value = "";
  any.textContent = prior.num_labels ? "any" : "any (the prior has no classes)";
  select.replaceChildren(any);
  for (let label = 0; label < prior.num_labels; label += 1) {
    const option = document.createElement("option");
    option.value = String(label);
    option.textContent = String(label);
    select.append(option);
  }
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  $("gen-top-k").max = String(prior.codebook_size);
}

function clearSamples() {
  state.genRun += 1;
  if (state.genAbort) state.genAbort.abort();
  state.generated = null;
  $("gen-samples").replaceChildren();
  $("gen-samples").dataset.count = "0";
}

function setGenerateState(kind, text) {
  $("generate").dataset.state = kind;
  $("gen-status").textContent = text;
}

function showGenerateError(error) {
  clearSamples(); // nothing under the message that it does not describe
  $("gen-error").textContent = errorText(error);
  $("gen-error").hidden = false;
  setGenerateState("error", "");
}

// an optional whole number field: empty is `undefined` (the service's default); anything else must be whole
function wholeNumber(id, what) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isSafeInteger(value)) throw new ApiError(`${what} must be a whole number.`);
  return value;
}

// the sampling settings of the Generate panel, as /generate and /complete read them; the service checks ranges
function samplingParams() {
  const raw = $("gen-temperature").value.trim();
  const temperature = raw === "" ? undefined : Number(raw);
  if (temperature !== undefined && !Number.isFinite(temperature)) throw new ApiError("The temperature must be a number.");
  const label = $("gen-label").value;
  return {
    label: label === "" ? null : Number(label),
    temperature,
    top_k: wholeNumber("gen-top-k", "Top-k") ?? null,
    seed: wholeNumber("gen-seed", "The seed"),
  };
}

const MAX_SAMPLES = 16;

// draw `count` samples one request at a time (count 1, first_sample b, one seed): the same samples one request
// for all of them would give, each shown as soon as it is drawn
async function onGenerate(event) {
  event.preventDefault();
  const info = currentModel();
  if (!info || !info.prior) return;
  clearSamples();
  $("gen-error").hidden = true;
  const id = state.genRun;
  const abort = new AbortController();
  state.genAbort = abort;
  try {
    const params = samplingParams();
    const count = wholeNumber("gen-count", "The number of samples") ?? 1;
    if (count < 1 || count > MAX_SAMPLES) throw new ApiError(`Draw from 1 to ${MAX_SAMPLES} samples.`);
    let seed = params.seed;
    state.generated = { model: info.name, seed: null, shape: info.prior.grid, samples: [] };
    for (let b = 0; b < count; b += 1) {
      setGenerateState("busy", `Drawing sample ${b + 1} of ${count}…`);
      const body = { ...params, seed, count: 1, first_sample: b };
      const { data, ms } = await call(
        `/generate?${modelQuery(info.name)}`,
        {
          method: "POST",
          signal: abort.signal,
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify(body),
        },
        readJSON,
      );
      if (id !== state.genRun) return;
      seed = data.seed; // the one the service chose when none was given: the rest of the samples use it too
      state.generated.seed = seed;
      state.generated.shape = data.shape;
      state.generated.samples.push(data.samples[0]);
      state.generated.ms = (state.generated.ms || 0) + ms;
      addSample(b, data.samples[0], seed);
    }
    const label = params.label === null ? "" : ` of label ${params.label}`;
    setGenerateState("ready", `Drew ${count} sample${count === 1 ? "" : "s"}${label} with seed ${seed}.`);
  } catch (error) {
    if (id === state.genRun && error.name !== "AbortError") showGenerateError(error);
  }
}

function addSample(b, sample, seed) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.sampleIndex = String(b);
  button.title = "Open this sample's codes in the code-map editor";
  const img = document.createElement("img");
  img.src = `data:image/png;base64,${sample.image}`;
  img.alt = `Generated sample ${b + 1} (seed ${seed})`;
  const caption = document.createElement("span");
  caption.textContent = `#${b + 1}`;
  button.append(img, caption);
  $("gen-samples").append(button);
  $("gen-samples").dataset.count = String(b + 1);
}

function base64Blob(text, type) {
  const bytes = Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
  return new Blob([bytes], { type });
}

// a generated sample in the results card and the editor: its codes as drawn (not re-encoded), its picture as the
// original and the reconstruction (it is the decode of those codes)
async function openSample(event) {
  const button = event.target.closest("button[data-sample-index]");
  const generated = state.generated;
  if (!button || !generated) return;
  const b = Number(button.dataset.sampleIndex);
  const sample = generated.samples[b];
  const info = modelInfo(generated.model);
  const blob = base64Blob(sample.image, "image/png");
  state.image = { blob, name: `${generated.model}-seed-${generated.seed}-sample-${b + 1}.png` };
  const id = ++state.runId;
  clearError();
  clearEditError();
  if (state.decodeAbort) state.decodeAbort.abort();
  try {
    setStatus(`Opening sample ${b + 1}…`, true);
    const palette = await codebookPalette(info.name);
    const originalPixels = await modelPixels(blob, info.in_channels);
    if (id !== state.runId) return;
    const result = {
      model: info.name,
      indices: sample.indices,
      shape: generated.shape,
      imageSize: [originalPixels.height, originalPixels.width],
      codebookSize: info.codebook_size,
      factor: info.downsample_factor,
      channels: info.in_channels,
      psnr: Number.NaN,
      generated: true,
    };
    showResult(result, { blob, reconstruction: blob, palette, originalPixels, times: { generate: generated.ms } });
    await decodeEdited(id);
  } catch (error) {
    if (id === state.runId && error.name !== "AbortError") showError(error);
  }
}

// /complete's mask: the painted cells, or else the selected one; null when there is neither
function completionMask() {
  const [h, w] = state.result.shape;
  const painted = state.painted.includes(1);
  if (!painted && !state.selected) return null;
  const mask = [];
  for (let r = 0; r < h; r += 1) {
    const row = [];
    for (let c = 0; c < w; c += 1) {
      const selected = state.selected && state.selected[0] === r && state.selected[1] === c;
      row.push(painted ? state.painted[r * w + c] : selected ? 1 : 0);
    }
    mask.push(row);
  }
  return mask;
}

function updateCompleteButton() {
  const button = $("complete");
  const info = state.result && modelInfo(state.result.model);
  if (!info || !info.prior) {
    button.disabled = true;
    button.title = `${info ? info.name : "This model"} has no prior (GET /models/{name} reports "prior": null)`;
    return;
  }
  const cells = state.painted.reduce((n, v) => n + v, 0) || (state.selected ? 1 : 0);
  button.disabled = cells === 0 || state.completing === true;
  button.title = cells
    ? `Redraw ${cells} cell${cells === 1 ? "" : "s"} from the prior (POST /complete); every other cell is kept`
    : "Paint a region (or select a cell) to redraw it from the prior";
}

// POST /complete: the painted cells are redrawn from the prior given the rest of the grid, which is kept exactly
async function onComplete() {
  if (!state.result) return;
  const mask = completionMask();
  if (!mask) return;
  const id = state.runId;
  const serial = state.editSerial;
  const model = state.result.model;
  clearEditError();
  state.completing = true;
  updateCompleteButton();
  try {
    const params = samplingParams();
    const cells = mask.flat().reduce((n, v) => n + v, 0);
    setStatus(`Redrawing ${cells} cell${cells === 1 ? "" : "s"} with the prior…`, true);
    const { data, ms } = await call(
      `/complete?${modelQuery(model)}`,
      {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ ...params, indices: state.edited, mask }),
      },
      readJSON,
    );
    if (id !== state.runId) return;
    if (serial !== state.editSerial) throw new ApiError("The grid changed while the prior completed it; try again.");
    state.edited = data.samples[0].indices.map((row) => row.slice());
    state.editSerial += 1;
    state.times.complete = ms;
    state.completion = { seed: data.seed, mask };
    recount();
    drawBaseMap();
    afterEdit();
  } catch (error) {
    if (id !== state.runId) return;
    showEditError(errorText(error), false); // the grid and its decode still hold
    document.body.dataset.state = "error";
    $("status").textContent = "";
  } finally {
    state.completing = false;
    if (state.result) updateCompleteButton();
  }
}

// ---------------------------------------------------------------------------------------------- downloads

function downloadName(what) {
  const stem = `${fileStem(state.image.name)}-${state.result.model}`;
  const codes = countEdits() ? "codes-edited" : "codes";
  const names = {
    reconstruction: `${stem}-reconstruction.png`,
    decoded: `${stem}-${codes}-decoded.png`,
    npy: `${stem}-${codes}.npy`,
    json: `${stem}-${codes}.json`,
  };
  return names[what];
}

function onDownload(what) {
  if (!state.result) return;
  const blobs = {
    reconstruction: () => state.reconstruction,
    decoded: () => state.decoded,
    npy: () => npyInt32(state.edited),
    json: () => decodeRequestJSON(state.edited, state.result.imageSize),
  };
  const blob = blobs[what]();
  if (blob) saveBlob(blob, downloadName(what));
}

// ---------------------------------------------------------------------------------------------- inputs

async function onSample(event) {
  const button = event.target.closest("button[data-sample]");
  if (!button) return;
  // a grayscale digit goes to a grayscale model and a photo to an RGB one, when the server has one
  const channels = Number(button.dataset.channels);
  if (currentModel() && currentModel().in_channels !== channels) {
    const match = state.models.find((m) => m.in_channels === channels);
    if (match) {
      $("model").value = match.name;
      describeModel();
    }
  }
  try {
    const { data } = await call(`/static/${button.dataset.sample}`, { method: "GET" }, readBlob);
    await pickImage(data, button.textContent.trim());
  } catch (error) {
    showError(error);
  }
}

function onFile() {
  const file = $("file").files[0];
  if (file) pickImage(file, file.name);
}

function setupDrop() {
  const zone = $("dropzone");
  const over = (on) => (event) => {
    event.preventDefault();
    zone.classList.toggle("over", on);
  };
  zone.addEventListener("dragenter", over(true));
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  zone.addEventListener("drop", (event) => {
    over(false)(event);
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/") || f.type === "");
    if (file) pickImage(file, file.name);
    else showError(new ApiError("Drop an image file (PNG, JPEG or WebP)."));
  });
}

function init() {
  $("model").addEventListener("change", () => {
    describeModel();
    run();
  });
  $("file").addEventListener("change", onFile);
  document.querySelector(".samples").addEventListener("click", onSample);
  setupDrop();
  const map = $("codemap");
  map.addEventListener("pointerdown", onMapDown);
  map.addEventListener("pointermove", onMapMove);
  map.addEventListener("pointerup", onMapUp);
  map.addEventListener("pointercancel", onMapUp);
  map.addEventListener("pointerleave", onMapLeave);
  map.addEventListener("keydown", onMapKey);
  $("edit-form").addEventListener("submit", onApply);
  $("reset").addEventListener("click", onReset);
  $("complete").addEventListener("click", onComplete);
  $("generate-form").addEventListener("submit", onGenerate);
  $("gen-samples").addEventListener("click", openSample);
  $("random-code").addEventListener("click", onRandomCode);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearError();
    loadModels().then(run);
  });
  const toolChanged = () => {
    if (!state.result) return;
    drawCodeMap();
    updateEditInfo();
  };
  $("brush").addEventListener("change", toolChanged);
  for (const radio of document.querySelectorAll('input[name="tool"]')) radio.addEventListener("change", toolChanged);
  for (const radio of document.querySelectorAll('input[name="hist-scale"]')) {
    radio.addEventListener("change", () => {
      $("hist-info").textContent =
        `bars: cells per code (${histogramScale()} scale); click a bar to paint with that code`;
      if (state.result) drawHistogram();
    });
  }
  for (const what of ["reconstruction", "decoded", "npy", "json"]) {
    $(`download-${what}`).addEventListener("click", () => onDownload(what));
  }
  const histogram = $("histogram");
  histogram.addEventListener("pointermove", onHistogramMove);
  histogram.addEventListener("click", onHistogramClick);
  loadModels();
}

init();
