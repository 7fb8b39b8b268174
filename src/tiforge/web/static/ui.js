// Small helpers every page shares: element building, API calls, downloads, the event stream.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  return append(el, ...children);
}

// Element.append writes null as the text "null": pages append their parts through this instead,
// which, like h(), leaves out null, undefined and false (an absent optional part).
export function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// Every API answer is JSON, errors included ({"error", "field"} with a 4xx).
export async function api(path, body, method) {
  const init = { method: method || (body === undefined ? "GET" : "POST"), headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, init);
  const text = await res.text();
  let data;
  try { data = text ? JSON.parse(text) : {}; } catch { data = { error: text.slice(0, 300) }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// A POST whose answer is a file: save it under the server's file name.
export async function download(path, body, fallbackName) {
  const res = await fetch(path, { method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    try { msg = (await res.json()).error || msg; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(res.headers.get("Content-Disposition") || "");
  saveBlob(await res.blob(), match ? decodeURIComponent(match[1]) : fallbackName);
}

export function saveBlob(blob, name) {
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

export function status(kind, text) {
  return h("div", { class: `status ${kind}` }, text);
}

export function errorBox(err) {
  return status("bad", err instanceof Error ? err.message : String(err));
}

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "-";
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "-";
  s = Math.round(s);
  const m = Math.floor(s / 60), hr = Math.floor(m / 60);
  return hr ? `${hr}h ${m % 60}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

// One event stream for the whole page; pages subscribe and unsubscribe as they come and go.
const listeners = new Set();
export function startEvents() {
  const light = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { light.classList.add("on"); for (const l of listeners) l({ event: "reconnected" }); };
  source.onerror = () => {
    light.classList.remove("on"); // EventSource retries by itself, except after an HTTP error
    if (source.readyState === EventSource.CLOSED) setTimeout(startEvents, 5000);
  };
  source.onmessage = (msg) => {
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    for (const l of listeners) l(data);
  };
}
export function onEvent(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function pageTitle(text, ...extra) {
  return h("div", { class: "row" }, h("h1", { class: "grow" }, text), ...extra);
}

// "tiforge toy model (SD)" stays as it is; a name without its family gets it added.
export function modelLabel(m) {
  return m.family && !m.name.toLowerCase().includes(`(${m.family})`) ? `${m.name} (${m.family})` : m.name;
}
