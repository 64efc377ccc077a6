// "Try a function": a picture (chosen or dropped) is posted to POST /v1/functions/{name}; an image result
// is shown beside the original, a classify result as its top 5 with score bars, anything else as JSON,
// and an error as an error with its code and detail.

import { api, el, errorOf, getJson } from "./api.js";

const urls = [];

function keepUrl(blob) {
  const url = URL.createObjectURL(blob);
  urls.push(url);
  return url;
}

function dropUrls() {
  while (urls.length) URL.revokeObjectURL(urls.pop());
}

function figure(url, caption, id) {
  return el("figure", { id }, el("img", { src: url, alt: caption }), el("figcaption", { text: caption }));
}

export function scoreBars(top, label) {
  const list = el("ol", { class: "bars", "aria-label": label });
  for (const { label: name, score } of top.slice(0, 5)) {
    const pct = Math.max(0, Math.min(1, Number(score))) * 100;
    const bar = el("meter", { min: "0", max: "1", value: String(score), "aria-label": `${name} score` });
    list.append(el("li", { class: "bar" }, el("span", { class: "bar-label", text: name }), bar,
      el("span", { class: "bar-value", text: `${pct.toFixed(1)}%` })));
  }
  return list;
}

function showError(failure) {
  const box = document.getElementById("try-error");
  box.replaceChildren(el("strong", { class: "code", text: failure.code }),
    ` (HTTP ${failure.status}): `, el("span", { class: "detail", text: failure.detail }));
  box.hidden = false;
}

async function run(file, name) {
  const out = document.getElementById("try-result");
  const box = document.getElementById("try-error");
  box.hidden = true;
  dropUrls();
  out.replaceChildren(el("p", { class: "muted", text: `running ${name}…` }));
  const response = await api(`/v1/functions/${encodeURIComponent(name)}`, {
    method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!response.ok) {
    out.replaceChildren();
    showError(await errorOf(response));
    return;
  }
  const took = response.headers.get("X-Edged-Duration-Ms");
  const meta = el("p", { class: "muted", text: `${name} took ${took ? Number(took).toFixed(1) : "?"} ms` });
  const type = response.headers.get("Content-Type") || "";
  if (type.startsWith("image/")) {
    const pair = el("div", { class: "side-by-side" },
      figure(keepUrl(file), "original", "try-original"),
      figure(keepUrl(await response.blob()), `${name} result`, "try-output"));
    out.replaceChildren(pair, meta);
    return;
  }
  const body = await response.json();
  if (Array.isArray(body.top)) {
    out.replaceChildren(figure(keepUrl(file), "original", "try-original"),
      el("p", { class: "top-label", text: `${body.label} (${body.model || name})` }),
      scoreBars(body.top, `${name}: top ${Math.min(5, body.top.length)}`), meta);
    return;
  }
  out.replaceChildren(el("pre", { text: JSON.stringify(body, null, 2) }), meta);
}

export async function setupTry() {
  const form = document.getElementById("try-form");
  const input = document.getElementById("try-file");
  const select = document.getElementById("try-function");
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) {
      input.files = ev.dataTransfer.files;
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const file = input.files[0];
    if (!file) return;
    run(file, select.value).catch((exc) => showError({ status: 0, code: "network", detail: String(exc) }));
  });
  const { functions } = await getJson("/v1/functions");
  select.replaceChildren(...functions.map((f) => el("option", { value: f.name, text: f.name })));
  form.dataset.ready = "true";
}
