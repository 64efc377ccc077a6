// "Live": recent results per camera. Filled from GET /v1/events?limit=, then kept current by
// GET /v1/events/stream read with fetch (EventSource cannot send the token), resumed with Last-Event-ID
// after a backoff. Image results get a thumbnail fetched with the token as a blob URL; every URL is revoked
// when its result falls out of the bounded list.

import { api, el, errorOf, getJson } from "./api.js";
import { scoreBars } from "./try.js";

const PER_CAMERA = 6;
const MAX_CAMERAS = 12;
const FILL = 50;
const cameras = new Map(); // camera -> [{doc, node, url}] newest first
const seen = new Set();
let lastId = null;

function state(text) {
  document.getElementById("live-state").textContent = text;
}

function cameraBox(camera) {
  let box = document.querySelector(`[data-camera="${CSS.escape(camera)}"]`);
  if (!box) {
    box = el("article", { class: "camera", "data-camera": camera, "aria-label": `camera ${camera}` },
      el("h3", { text: camera }), el("ul", { class: "events" }));
    document.getElementById("live-cameras").prepend(box);
  }
  return box;
}

function forget(item) {
  seen.delete(item.doc.id);
  if (item.url) URL.revokeObjectURL(item.url);
  item.node.remove();
}

async function thumbnail(item) {
  const response = await api(item.doc.image_url);
  if (!response.ok || !item.node.isConnected) return;
  item.url = URL.createObjectURL(await response.blob());
  item.node.prepend(el("img", { class: "thumb", src: item.url, alt: `${item.doc.function} result` }));
}

function describe(doc) {
  if (doc.kind === "error" || doc.error) {
    return el("p", { class: "error", text: `${doc.error?.code || "error"}: ${doc.error?.detail || ""}` });
  }
  const result = doc.result;
  if (result && Array.isArray(result.top)) {
    return el("div", {}, el("p", { class: "label", text: result.label }), scoreBars(result.top.slice(0, 3), "top 3"));
  }
  if (result) return el("p", { class: "muted", text: JSON.stringify(result).slice(0, 120) });
  const image = doc.image;
  return el("p", { class: "meta", text: image ? `${image.content_type.replace("image/", "")} · ${(image.bytes / 1024).toFixed(1)} KiB` : "" });
}

function add(doc) {
  if (!doc || !doc.id || seen.has(doc.id)) return;
  seen.add(doc.id);
  const when = doc.created_at ? new Date(doc.created_at).toLocaleTimeString() : "";
  const node = el("li", { class: `event ${doc.kind}`, "data-event": doc.id, "data-function": doc.function },
    el("p", { class: "meta", text: `${doc.function} · ${when}${doc.latency_ms != null ? ` · ${Math.round(doc.latency_ms)} ms` : ""}` }),
    describe(doc));
  const item = { doc, node, url: null };
  const box = cameraBox(doc.camera);
  box.querySelector(".events").prepend(node);
  const list = cameras.get(doc.camera) || [];
  list.unshift(item);
  while (list.length > PER_CAMERA) forget(list.pop());
  cameras.set(doc.camera, list);
  document.getElementById("live-cameras").prepend(box);
  if (cameras.size > MAX_CAMERAS) {
    const boxes = document.querySelectorAll("#live-cameras .camera");
    const oldest = boxes[boxes.length - 1].dataset.camera;
    cameras.get(oldest).forEach(forget);
    cameras.delete(oldest);
    boxes[boxes.length - 1].remove();
  }
  if (doc.image_url) thumbnail(item).catch(() => {});
}

// One SSE message block ("id:", "event:", "data:" lines; ":" comments ignored) -> the event document.
function parseBlock(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (id) lastId = id;
  return data.length ? JSON.parse(data.join("\n")) : null;
}

async function stream() {
  const headers = lastId ? { "Last-Event-ID": lastId } : {};
  const response = await api("/v1/events/stream", { headers });
  if (!response.ok) {
    const failure = await errorOf(response);
    throw new Error(`${failure.code}: ${failure.detail}`);
  }
  state("live");
  document.getElementById("live").dataset.streaming = "true";
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      add(parseBlock(buffer.slice(0, end)));
      buffer = buffer.slice(end + 2);
    }
  }
}

export async function setupLive() {
  try {
    const { events } = await getJson(`/v1/events?limit=${FILL}`);
    events.slice().reverse().forEach(add);
    if (events.length) lastId = events[0].id;
  } catch (exc) {
    state(`history unavailable (${exc.code || exc.message})`);
  }
  let delay = 500;
  for (;;) {
    const started = Date.now();
    let failure = null;
    try {
      await stream();
    } catch (exc) {
      failure = exc;
    }
    document.getElementById("live").dataset.streaming = "false";
    // A stream that stayed up a while resets the backoff; one failing at once doubles it, up to 30 s.
    delay = Date.now() - started > 30000 ? 1000 : Math.min(delay * 2, 30000);
    const why = failure ? `stream unavailable (${failure.message})` : "stream ended";
    state(`${why}; reconnecting in ${Math.round(delay / 1000)} s`);
    await new Promise((resolve) => { setTimeout(resolve, delay); });
  }
}
