// The review page: list the queue, show the photo with its mask, paint corrections, send decisions.
// Plain JavaScript, no build step and nothing loaded from elsewhere. The mask lives in an off-screen
// canvas as its alpha channel (255 = product), so showing the overlay and the cutout is a drawImage,
// not a loop over pixels; only loading and saving convert between alpha and an 8-bit grey PNG.
"use strict";

const OVERLAY_RGB = [255, 0, 96];
const UNDO_BYTES = 200e6; // at most this much memory for undo snapshots

const $ = (id) => document.getElementById(id);
const state = {
  items: [],
  item: null, // the opened item (the API's ItemDetail)
  photo: null, // ImageBitmap
  mask: document.createElement("canvas"), // alpha = mask
  tool: "brush",
  opacity: 0.5,
  undo: [],
  stroke: null, // the last point of the stroke being painted
  busy: false,
  reviewer: "reviewer", // who we are to the API; changes only when the name field is committed
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- talking to the API --------------------------------------------------------------------------

function reviewer() {
  return state.reviewer;
}

function token() {
  return $("token").value || sessionStorage.getItem("cutout-token") || "";
}

async function api(path, options = {}) {
  const headers = { "X-Reviewer": reviewer(), ...(options.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let message = response.statusText;
  try {
    message = (await response.json()).error || message;
  } catch (ignored) {
    // not JSON: keep the status text
  }
  if (response.status === 401) $("token-field").hidden = false;
  throw new ApiError(response.status, message);
}

async function blobBitmap(path, options) {
  const blob = await (await api(path)).blob();
  return createImageBitmap(blob, options);
}

// from-image: a photo with an EXIF orientation shows upright, as its mask was made. The mask's grey
// values are data, not colours: no colour management, no premultiplication.
const PHOTO_OPTIONS = { imageOrientation: "from-image" };
const MASK_OPTIONS = { imageOrientation: "none", colorSpaceConversion: "none", premultiplyAlpha: "none" };

function say(message, kind = "info") {
  const status = $("status");
  status.textContent = message;
  status.dataset.state = kind;
}

// --- the queue -----------------------------------------------------------------------------------

async function refreshList() {
  const answer = await (await api("api/items")).json();
  state.items = answer.items;
  $("counter").textContent = `${answer.remaining} left`;
  $("counter").dataset.remaining = answer.remaining;
  const list = $("items");
  list.replaceChildren();
  for (const item of answer.items) {
    const entry = document.createElement("li");
    entry.dataset.id = item.id;
    const taken = item.claimed_by && item.claimed_by !== reviewer();
    if (taken) entry.classList.add("taken");
    if (state.item && item.id === state.item.id) entry.setAttribute("aria-current", "true");
    const button = document.createElement("button");
    button.type = "button";
    button.title = taken ? `being reviewed by ${item.claimed_by}` : `score ${item.score}`;
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = item.id;
    const score = document.createElement("span");
    score.textContent = item.score == null ? "" : Number(item.score).toFixed(3);
    button.append(id, score);
    button.addEventListener("click", () => openItem(item.id));
    entry.append(button);
    list.append(entry);
  }
}

function neighbour(step) {
  const free = state.items.filter((item) => !item.claimed_by || item.claimed_by === reviewer());
  if (!free.length) return null;
  const here = state.item ? free.findIndex((item) => item.id === state.item.id) : -1;
  if (here < 0) return free[0].id;
  return free[(here + step + free.length) % free.length].id;
}

async function openNext(step = 1) {
  await refreshList();
  const next = neighbour(step);
  if (next && (!state.item || next !== state.item.id)) return openItem(next);
  if (!next) showEmpty();
}

function showEmpty() {
  state.item = null;
  document.body.dataset.item = "";
  for (const canvas of [$("editor"), $("preview")]) {
    canvas.width = canvas.height = 1;
  }
  $("item-info").textContent = "";
  setActions(false);
  say("The queue is empty: nothing left to review.", "done");
}

async function openItem(id) {
  const previous = state.item;
  if (previous && previous.id !== id) {
    api(`api/items/${previous.id}/release`, { method: "POST" }).catch(() => {});
  }
  try {
    const item = await (await api(`api/items/${id}`)).json();
    const [photo, mask] = await Promise.all([
      blobBitmap(item.photo_url, PHOTO_OPTIONS),
      blobBitmap(item.mask_url, MASK_OPTIONS),
    ]);
    if (photo.width !== mask.width || photo.height !== mask.height) {
      throw new Error(`${id}: the photo is ${photo.width}×${photo.height} but its mask ${mask.width}×${mask.height}`);
    }
    state.item = item;
    state.photo = photo;
    loadMask(mask);
    state.undo = [];
    $("undo").disabled = true;
    document.body.dataset.item = item.id;
    const mine = item.claim.yours;
    setActions(mine);
    $("item-info").textContent =
      `${item.id} · score ${Number(item.score).toFixed(3)} (threshold ${item.threshold}) · ` +
      `${item.width}×${item.height} · model ${item.model_name} v${item.model_version}`;
    say(mine ? `Reviewing ${item.id}` : `${item.id} is being reviewed by ${item.claim.reviewer}: pick another`,
        mine ? "info" : "error");
    render();
    await refreshList();
  } catch (error) {
    say(error.message, "error");
  }
}

function setActions(enabled) {
  for (const id of ["accept", "save", "reject"]) $(id).disabled = !enabled;
}

// --- the mask: load, draw, paint, undo, export ----------------------------------------------------

function loadMask(bitmap) {
  const { width, height } = bitmap;
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const pixels = context.getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i + 3] = data[i]; // grey → alpha
    [data[i], data[i + 1], data[i + 2]] = OVERLAY_RGB;
  }
  state.mask.width = width;
  state.mask.height = height;
  state.mask.getContext("2d", { willReadFrequently: true }).putImageData(pixels, 0, 0);
  for (const canvas of [$("editor"), $("preview")]) {
    canvas.width = width;
    canvas.height = height;
  }
}

function render() {
  if (!state.photo) return;
  const { width, height } = state.mask;
  const editor = $("editor").getContext("2d");
  editor.clearRect(0, 0, width, height);
  editor.drawImage(state.photo, 0, 0);
  editor.globalAlpha = state.opacity;
  editor.drawImage(state.mask, 0, 0);
  editor.globalAlpha = 1;
  const preview = $("preview").getContext("2d");
  preview.clearRect(0, 0, width, height);
  preview.globalCompositeOperation = "source-over";
  preview.drawImage(state.photo, 0, 0);
  preview.globalCompositeOperation = "destination-in"; // keep the photo where the mask is
  preview.drawImage(state.mask, 0, 0);
  preview.globalCompositeOperation = "source-over";
}

let renderQueued = false;
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function imagePoint(event) {
  const box = $("editor").getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * state.mask.width) / box.width,
    y: ((event.clientY - box.top) * state.mask.height) / box.height,
  };
}

function imageScale() {
  // Image pixels per screen pixel: the brush keeps its size on screen whatever the photo's size.
  return state.mask.width / $("editor").getBoundingClientRect().width;
}

function brushWidth() {
  return Number($("size").value) * imageScale();
}

function paintTo(point) {
  const context = state.mask.getContext("2d");
  context.globalCompositeOperation = state.tool === "brush" ? "source-over" : "destination-out";
  context.strokeStyle = context.fillStyle = `rgb(${OVERLAY_RGB.join(",")})`;
  context.lineWidth = brushWidth();
  context.lineCap = context.lineJoin = "round";
  context.beginPath();
  if (state.stroke) {
    context.moveTo(state.stroke.x, state.stroke.y);
    context.lineTo(point.x, point.y);
    context.stroke();
  } else {
    context.arc(point.x, point.y, brushWidth() / 2, 0, 2 * Math.PI);
    context.fill();
  }
  context.globalCompositeOperation = "source-over";
  state.stroke = point;
  renderSoon();
}

function pushUndo() {
  const { width, height } = state.mask;
  const limit = Math.max(3, Math.min(30, Math.floor(UNDO_BYTES / (width * height * 4))));
  state.undo.push(state.mask.getContext("2d").getImageData(0, 0, width, height));
  if (state.undo.length > limit) state.undo.shift();
  $("undo").disabled = false;
}

function undo() {
  const snapshot = state.undo.pop();
  if (!snapshot) return;
  state.mask.getContext("2d").putImageData(snapshot, 0, 0);
  $("undo").disabled = state.undo.length === 0;
  render();
}

function maskPng() {
  const { width, height } = state.mask;
  const pixels = state.mask.getContext("2d").getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] = data[i + 1] = data[i + 2] = data[i + 3]; // alpha → grey
    data[i + 3] = 255;
  }
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  out.getContext("2d").putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// --- decisions -----------------------------------------------------------------------------------

async function decide(action) {
  const item = state.item;
  if (!item || state.busy || !item.claim.yours) return;
  state.busy = true;
  setActions(false);
  try {
    const base = `api/items/${item.id}/${action}`;
    const json = { "Content-Type": "application/json" };
    if (action === "accept") {
      await api(base, { method: "POST", headers: json, body: JSON.stringify({ version: item.version }) });
    } else if (action === "reject") {
      const reason = $("reject-reason").value;
      await api(base, { method: "POST", headers: json, body: JSON.stringify({ version: item.version, reason }) });
    } else {
      const body = await maskPng();
      const url = `${base}?version=${encodeURIComponent(item.version)}`;
      await api(url, { method: "POST", headers: { "Content-Type": "image/png" }, body });
    }
    const past = { accept: "accepted", reject: "rejected", save: "saved" }[action];
    state.item = null;
    await openNext();
    say(`${item.id} ${past}.` + (state.item ? ` Now reviewing ${state.item.id}.` : " The queue is empty."), "done");
  } catch (error) {
    say(error.message, "error");
    setActions(Boolean(state.item && state.item.claim.yours));
    if (error.status === 409 || error.status === 404) refreshList().catch(() => {});
  } finally {
    state.busy = false;
  }
}

// --- controls ------------------------------------------------------------------------------------

function setTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
}

function setSize(size) {
  const slider = $("size");
  slider.value = Math.max(Number(slider.min), Math.min(Number(slider.max), size));
  $("size-value").textContent = slider.value;
}

function setOpacity(percent) {
  const slider = $("opacity");
  slider.value = Math.max(0, Math.min(100, percent));
  state.opacity = Number(slider.value) / 100;
  render();
}

function setBackground(kind) {
  $("background").value = kind;
  $("preview-stage").className = `stage ${kind}`;
}

function moveCursor(event) {
  const cursor = $("brush-cursor");
  const stage = $("editor-stage").getBoundingClientRect();
  const size = Number($("size").value);
  cursor.hidden = false;
  cursor.style.width = cursor.style.height = `${size}px`;
  cursor.style.left = `${event.clientX - stage.left}px`;
  cursor.style.top = `${event.clientY - stage.top}px`;
}

function bindPainting() {
  const editor = $("editor");
  editor.addEventListener("pointerdown", (event) => {
    if (!state.item || !state.item.claim.yours || event.button !== 0) return;
    editor.setPointerCapture(event.pointerId);
    pushUndo();
    state.stroke = null;
    paintTo(imagePoint(event));
  });
  editor.addEventListener("pointermove", (event) => {
    moveCursor(event);
    if (state.stroke) paintTo(imagePoint(event));
  });
  const end = () => {
    state.stroke = null;
  };
  editor.addEventListener("pointerup", end);
  editor.addEventListener("pointercancel", end);
  editor.addEventListener("pointerleave", () => {
    $("brush-cursor").hidden = true;
  });
}

const SHORTCUTS = {
  a: () => decide("accept"),
  s: () => decide("save"),
  r: () => decide("reject"),
  b: () => setTool("brush"),
  e: () => setTool("eraser"),
  "[": () => setSize(Number($("size").value) - 4),
  "]": () => setSize(Number($("size").value) + 4),
  u: undo,
  o: () => setOpacity(state.opacity > 0 ? 0 : 50),
  ",": () => setOpacity(Number($("opacity").value) - 10),
  ".": () => setOpacity(Number($("opacity").value) + 10),
  c: () => setBackground($("background").value === "checker" ? "white" : "checker"),
  n: () => openNext(1),
  p: () => openNext(-1),
};

function onKey(event) {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "range";
  const key = event.key.toLowerCase();
  if ((event.ctrlKey || event.metaKey) && (key === "z" || key === "s")) {
    event.preventDefault();
    return key === "z" ? undo() : decide("save");
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey || !(key in SHORTCUTS)) return;
  event.preventDefault();
  SHORTCUTS[key]();
}

function bindControls() {
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => setTool(button.dataset.tool));
  }
  $("size").addEventListener("input", () => setSize(Number($("size").value)));
  $("opacity").addEventListener("input", () => setOpacity(Number($("opacity").value)));
  $("background").addEventListener("change", () => setBackground($("background").value));
  $("undo").addEventListener("click", undo);
  $("accept").addEventListener("click", () => decide("accept"));
  $("save").addEventListener("click", () => decide("save"));
  $("reject").addEventListener("click", () => decide("reject"));
  $("reviewer").addEventListener("change", async () => {
    const name = $("reviewer").value.trim();
    if (!name || name === state.reviewer) return;
    const current = state.item;
    if (current) {
      // Give the item back under the old name, then open it again under the new one.
      await api(`api/items/${current.id}/release`, { method: "POST" }).catch(() => {});
      state.item = null;
    }
    state.reviewer = name;
    localStorage.setItem("cutout-reviewer", name);
    if (current) await openItem(current.id);
    else await refreshList();
  });
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("cutout-token", $("token").value);
    start();
  });
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", () => {
    if (state.item) {
      // keepalive: the release still goes out while the page unloads.
      const headers = { "X-Reviewer": reviewer() };
      if (token()) headers.Authorization = "Bearer " + token();
      fetch(`api/items/${state.item.id}/release`, { method: "POST", headers, keepalive: true });
    }
  });
}

async function start() {
  try {
    await openNext();
  } catch (error) {
    say(error.message, "error");
  }
}

function init() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    // A token in the fragment (#token=…) never reaches a server log; keep it for this tab and hide it.
    sessionStorage.setItem("cutout-token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  $("token").value = sessionStorage.getItem("cutout-token") || "";
  state.reviewer = localStorage.getItem("cutout-reviewer") || `reviewer-${Math.random().toString(36).slice(2, 6)}`;
  $("reviewer").value = state.reviewer;
  setBackground("checker");
  bindControls();
  bindPainting();
  start();
}

init();
