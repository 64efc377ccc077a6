// "Status": /readyz (each connection's state and since when), /v1/outbox (depth, oldest age, dead letters,
// retry), /v1/functions (calls, errors by code, p50/p99) with a small latency chart per function, polled
// every few seconds; each chart keeps a bounded series in memory.

import { ago, api, el, errorOf, getJson } from "./api.js";

const POLL_MS = 3000;
const POINTS = 60;
const series = new Map(); // function -> [{p50, p99}]
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function components(ready) {
  document.getElementById("device").textContent =
    `${ready.device_id} · ${ready.ready ? "ready" : `not ready (${ready.reason})`}`;
  const now = Date.now() / 1000;
  const rows = Object.entries(ready.components).map(([name, c]) => el("tr", { "data-component": name },
    el("th", { scope: "row", text: name }),
    el("td", { class: `state ${c.state}`, text: c.detail ? `${c.state} (${c.detail})` : c.state }),
    el("td", { text: `${new Date(c.since * 1000).toLocaleTimeString()} (${ago(now - c.since)} ago)` })));
  document.querySelector("#components tbody").replaceChildren(...rows);
}

function outbox(box) {
  const facts = [["depth", box.depth], ["oldest", ago(box.oldest_age_s)], ["dead letters", box.dead],
    ["last sync", box.last_sync_at ? `${ago(Date.now() / 1000 - box.last_sync_at)} ago` : "never"],
    ["last error", box.last_error || "none"]];
  document.getElementById("outbox").replaceChildren(...facts.flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", { "data-fact": name, text: String(value) })]));
  document.getElementById("retry-dead").disabled = box.dead === 0;
}

function chart(points) {
  const width = 240;
  const height = 64;
  const top = Math.max(1, ...points.map((p) => p.p99 || 0));
  const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  for (const [key, cls] of [["p99", "p99"], ["p50", "p50"]]) {
    const step = (width - 8) / Math.max(points.length - 1, 1);
    const coords = points.map((p, i) => `${4 + i * step},${height - 4 - ((p[key] || 0) / top) * (height - 20)}`);
    box.append(svg("polyline", { points: coords.join(" "), class: cls, fill: "none" }));
    // The newest point as a dot too, so that a single poll already shows something.
    const [x, y] = coords[coords.length - 1].split(",");
    box.append(svg("circle", { cx: x, cy: y, r: "3", class: cls }));
  }
  const scale = svg("text", { x: String(width - 4), y: "12", "text-anchor": "end", class: "scale" }); // above the plot band
  scale.textContent = `${top.toFixed(0)} ms`;
  box.append(scale);
  const label = svg("title", {});
  label.textContent = `latency p50 and p99 over the last ${points.length} polls, up to ${top.toFixed(1)} ms`;
  box.prepend(label);
  return box;
}

function functions(list) {
  const cards = list.map((f) => {
    const points = series.get(f.name) || [];
    points.push({ p50: f.latency.p50_ms, p99: f.latency.p99_ms });
    if (points.length > POINTS) points.splice(0, points.length - POINTS);
    series.set(f.name, points);
    const errors = Object.entries(f.errors).map(([code, n]) => `${code} ${n}`).join(", ") || "none";
    const ms = (v) => (v === null ? "–" : `${v.toFixed(1)} ms`);
    return el("article", { class: "function", "data-function": f.name, "aria-label": `function ${f.name}` },
      el("h4", { text: f.name }),
      el("p", { text: `calls ${f.calls} · errors: ${errors}` }),
      el("p", { text: `p50 ${ms(f.latency.p50_ms)} · p99 ${ms(f.latency.p99_ms)}` }),
      chart(points));
  });
  document.getElementById("functions").replaceChildren(...cards);
}

async function poll() {
  const ready = await fetch("/readyz").then((r) => r.json());
  components(ready);
  const box = await api("/v1/outbox");
  if (box.ok) outbox(await box.json());
  else document.getElementById("outbox").replaceChildren(el("dd", { text: (await errorOf(box)).code }));
  functions((await getJson("/v1/functions")).functions);
  document.getElementById("status").dataset.polled = String(Number(document.getElementById("status").dataset.polled || 0) + 1);
}

export function setupStatus() {
  const button = document.getElementById("retry-dead");
  button.addEventListener("click", async () => {
    button.disabled = true;
    const response = await api("/v1/outbox/dead/retry", { method: "POST" });
    const out = document.getElementById("retry-result");
    if (response.ok) out.textContent = `${(await response.json()).requeued} queued again`;
    else out.textContent = `retry failed: ${(await errorOf(response)).code}`;
  });
  const tick = () => poll().catch((exc) => {
    document.getElementById("device").textContent = `status unavailable: ${exc.code || exc.message}`;
  }).finally(() => setTimeout(tick, POLL_MS));
  tick();
}
