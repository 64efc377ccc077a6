// Calls to the daemon's API with the bearer token: a 401 shows the token form once (however many calls are
// waiting), keeps the answer in sessionStorage for this tab, and retries.

const KEY = "edged.token";
let asking = null;

export function token() {
  return sessionStorage.getItem(KEY);
}

export function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : { ...extra };
}

function askToken(wrong) {
  if (asking) return asking;
  const panel = document.getElementById("token-panel");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const message = document.getElementById("token-message");
  if (wrong) message.textContent = "That token was refused (401). Enter the daemon's bearer token.";
  panel.hidden = false;
  input.focus();
  asking = new Promise((resolve) => {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      panel.hidden = true;
      asking = null;
      resolve();
    }, { once: true });
  });
  return asking;
}

// fetch(path) with the token; on 401 asks for it and tries again, until the daemon takes it.
export async function api(path, options = {}) {
  for (;;) {
    const sent = token();
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
    if (response.status !== 401) return response;
    // Another call may have been answered with a new token meanwhile: use it before asking.
    if (token() === sent) await askToken(sent !== null);
  }
}

// The one error shape {"error", "detail"} of a failed answer, whatever the body holds.
export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (body && typeof body.error === "string") return { status: response.status, code: body.error, detail: body.detail || "" };
  return { status: response.status, code: `http_${response.status}`, detail: response.statusText };
}

export async function getJson(path) {
  const response = await api(path);
  if (!response.ok) throw Object.assign(new Error(path), await errorOf(response));
  return response.json();
}

// Text helpers shared by the views.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, seconds); // the browser's clock may run a little behind the daemon's
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}
