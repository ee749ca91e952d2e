// The dashboard: filters, a live table (newest first), connection state,
// pause/resume, clear, an events/s readout and gap markers. Built on
// kumiho-events.js, which also persists the cursor across reloads.
import { subscribe } from "./kumiho-events.js";

const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);
const rows = $("events");
const form = $("filters");

let feed = null;
let paused = false;
let waiting = []; // rows held while paused (the newest MAX_ROWS)
let waitingCount = 0;
let arrivals = []; // arrival times within the last second

// -- theme ---------------------------------------------------------------
const savedTheme = localStorage.getItem("kumiho-dashboard:theme");
if (savedTheme) document.documentElement.dataset.theme = savedTheme;
$("theme").addEventListener("click", () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  localStorage.setItem("kumiho-dashboard:theme", next);
});

// -- rows ----------------------------------------------------------------
function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}

function eventRow(event) {
  const details = Object.entries(event.details || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  const tr = row([
    [event.timestamp.replace("T", " ").replace("Z", ""), "time"],
    [event.routing_key, "key"],
    [event.kref, "kref"],
    [event.username || event.author, "author"],
    [details, "details"],
  ]);
  tr.dataset.cursor = event.cursor;
  tr.dataset.routingKey = event.routing_key;
  return tr;
}

function gapRow(reset) {
  const tr = row([
    ["", "time"],
    ["gateway.reset", "key"],
    [`gap: ${reset.reason} (requested ${reset.requested_cursor || "none"})`, "kref"],
    ["", "author"],
    [`resumed from ${reset.resumed_from}`, "details"],
  ], "gap");
  return tr;
}

function show(tr) {
  if (paused) {
    waitingCount += 1;
    waiting.push(tr);
    if (waiting.length > MAX_ROWS) waiting.shift();
    $("waiting").textContent = `${waitingCount} waiting`;
    return;
  }
  rows.prepend(tr);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
  $("empty").hidden = true;
}

function setPaused(value) {
  paused = value;
  $("pause").setAttribute("aria-pressed", String(paused));
  $("pause").textContent = paused ? "resume" : "pause";
  if (!paused) {
    const held = waiting;
    waiting = [];
    waitingCount = 0;
    $("waiting").textContent = "";
    for (const tr of held) show(tr);
  }
}

function clear() {
  rows.replaceChildren();
  waiting = [];
  waitingCount = 0;
  $("waiting").textContent = "";
  $("empty").hidden = false;
}

// -- the feed --------------------------------------------------------------
function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of ["routing_key", "kref"]) form.elements[name].value = params.get(name) || "";
  const from = params.get("from") || "latest";
  if (from === "latest" || from === "beginning") form.elements.from.value = from;
  else {
    form.elements.from.value = "timestamp";
    form.elements.at.value = localInputValue(new Date(from));
  }
  $("at-label").hidden = form.elements.from.value !== "timestamp";
}

/** The instant as a datetime-local input shows it: the viewer's local time. */
function localInputValue(date) {
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 19);
}

/** The start position to send: latest, beginning, or the chosen local time as UTC ISO. */
function startPosition() {
  return form.elements.from.value === "timestamp"
    ? new Date(form.elements.at.value).toISOString()
    : form.elements.from.value;
}

/** "upstream unavailable (UNAVAILABLE) since 12:00:01, retrying in 2.5 s" */
function upstreamText(status) {
  const since = new Date(status.since).toLocaleTimeString();
  const code = status.code ? ` (${status.code})` : "";
  const retry = status.retry_in_ms == null ? "" : `, retrying in ${(status.retry_in_ms / 1000).toFixed(1)} s`;
  return `upstream ${status.upstream}${code} since ${since}${retry}`;
}

function start() {
  feed?.close();
  const from = startPosition();
  const options = {
    routingKey: form.elements.routing_key.value.trim(),
    kref: form.elements.kref.value.trim(),
    from,
    onEvent: (event) => {
      arrivals.push(performance.now());
      if (event.cursor) $("cursor").textContent = event.cursor;
      show(eventRow(event));
    },
    onReset: (reset) => show(gapRow(reset)),
    onStatus: (status) => {
      $("upstream").textContent = status.upstream === "live" ? "" : upstreamText(status);
    },
    onStateChange: (state, reconnects) => {
      $("state").textContent = state;
      $("state").dataset.state = state;
      $("reconnects").textContent = String(reconnects);
      if (state === "reconnecting") $("upstream").textContent = "";
    },
    onError: (error) => {
      $("state").textContent = `stopped: ${error.message}`;
    },
  };
  feed = subscribe(options);
  window.kumihoFeed = feed; // for the console (and the browser tests)
}

form.elements.from.addEventListener("change", () => {
  $("at-label").hidden = form.elements.from.value !== "timestamp";
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  if (form.elements.routing_key.value) params.set("routing_key", form.elements.routing_key.value);
  if (form.elements.kref.value) params.set("kref", form.elements.kref.value);
  if (form.elements.from.value !== "latest") params.set("from", startPosition());
  history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
  clear();
  feed?.forget(); // new filters start from their own start position
  start();
});
$("pause").addEventListener("click", () => setPaused(!paused));
$("clear").addEventListener("click", clear);
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.metaKey || event.ctrlKey || event.altKey) return;
  if (event.key === "p") setPaused(!paused);
  else if (event.key === "c") clear();
  else if (event.key === "/") {
    event.preventDefault();
    form.elements.routing_key.focus();
  }
});

setInterval(() => {
  const now = performance.now();
  arrivals = arrivals.filter((t) => now - t < 1000);
  $("rate").textContent = String(arrivals.length);
}, 250);

filtersFromUrl();
start();
