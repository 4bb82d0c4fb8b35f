// What both pages share: the key (kept in this tab's sessionStorage only), calls to the runs API, the
// server-sent events reader, DOM building and number formats. Text from runs is hostile (model output):
// it only ever becomes text nodes, never markup.

const KEY_ITEM = "rlm-proxy.viewer.key";
// The proxy's root: the pages live under <root>/ui/.
const ROOT = location.pathname.slice(0, location.pathname.lastIndexOf("/ui/"));

export class KeyRefused extends Error {}
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const byId = (id) => document.getElementById(id);

// An element with properties and children; strings become text nodes.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { authorization: `Bearer ${key}`, ...extra } : extra;
}

async function refusal(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not JSON: the status says enough
  }
  const message = error.message || `HTTP ${response.status}`;
  if (response.status === 401 || response.status === 403) return new KeyRefused(message);
  return new ApiError(response.status, error.code, message);
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(ROOT + path, init);
  if (!response.ok) throw await refusal(response);
  return response.json();
}

// Server-sent events read with fetch(), which (unlike EventSource) can send the key. Yields each event's
// parsed data; `lastId` resumes after that event (Last-Event-ID).
export async function* serverEvents(path, lastId, signal) {
  const extra = { accept: "text/event-stream" };
  if (lastId !== null) extra["last-event-id"] = String(lastId);
  const response = await fetch(ROOT + path, { headers: headers(extra), signal });
  if (!response.ok) throw await refusal(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
      if (data) yield JSON.parse(data);  // a block of comments only is a heartbeat
    }
  }
}

// The key form and the "Forget key" button. `onKey` runs once a key is there (at once if the tab has one).
export function keyGate(onKey) {
  const form = byId("key-form");
  const forget = byId("forget-key");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, byId("key").value.trim());
    byId("key").value = "";
    form.hidden = true;
    forget.hidden = false;
    problem(null);
    onKey();
  });
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    askForKey("The key is forgotten.");
  });
  if (sessionStorage.getItem(KEY_ITEM) === null) askForKey(null);
  else {
    forget.hidden = false;
    onKey();
  }
}

export function askForKey(message) {
  problem(message);
  byId("key-form").hidden = false;
  byId("forget-key").hidden = true;
  byId("key").focus();
}

export function problem(message) {
  const box = byId("problem");
  box.hidden = !message;
  box.textContent = message || "";
}

// What to do with an error from the API: a refused key asks for another.
export function failed(error, what) {
  if (error instanceof KeyRefused) askForKey(`The proxy refused the key: ${error.message}`);
  else problem(`${what}: ${error.message}`);
}

export const formatTime = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "–");
export const formatSeconds = (s) => (s === null || s === undefined ? "–" : s < 10 ? `${s.toFixed(2)} s`
  : s < 600 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
export const formatCost = (usd) => (usd === null || usd === undefined ? "–" : `$${usd.toFixed(usd < 0.01 ? 6 : 4)}`);
export const formatPercent = (fraction) => `${Math.round((fraction || 0) * 1000) / 10}%`;
export const formatCount = (n) => (n === null || n === undefined ? "–" : n.toLocaleString());

export function facts(list, pairs) {
  list.replaceChildren(...pairs.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: String(value) })]));
}
