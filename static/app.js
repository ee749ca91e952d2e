// The dashboard: one or more filter panels, each with its own feed, an
// events/s chart over the last five minutes, counts by routing key and a
// table (newest first) whose rows open into the full event. The header sums
// up the connection. Panels, their filters and their last rows survive a
// reload; each panel resumes from its own cursor, so nothing is shown twice
// and nothing is missed.
//
// Event data is hostile: it only ever reaches the page as textContent (or a
// property such as dataset), never as markup.
import { subscribe } from "./kumiho-events.js";

const MAX_ROWS = 300; // per panel: shown, and kept across reloads
const WINDOW_S = 300; // the chart's five minutes, one bar a second
const TOP_KEYS = 12; // routing keys listed per panel
const MAX_KEYS = 500; // routing keys counted per panel: a day of odd keys stays small
const WORKSPACES_KEY = "kumiho-dashboard:workspaces"; // [{id, seen}]
const MAX_WORKSPACES = 16;
const THEME_KEY = "kumiho-dashboard:theme";
const FILTER_NAMES = ["routing_key", "kref", "details", "author", "username"];
// Worst first: the badge shows the worst state of any panel, so it is "live"
// only when every feed is (and a feed is live only while the upstream is).
const STATE_ORDER = ["stopped", "upstream-down", "reconnecting", "connecting", "live"];
// Whose connection the panels read (kumiho-events.js shares one among the browser's tabs).
const CONNECTION = {
  leader: "connection held by this tab",
  follower: "connection shared from another tab",
  own: "a connection per panel",
};

const $ = (id) => document.getElementById(id);
// The keys of this tab's workspace (see claimWorkspace); "" is the first one's.
let workspace = "";
const workspaceKey = (id) => `kumiho-dashboard:${id ? `${id}:` : ""}`;
const panelsKey = () => `${workspaceKey(workspace)}panels`;
const panelKey = (id, what) => `${workspaceKey(workspace)}panel:${id}:${what}`;

/**
 * What a panel filters on, as the first panel's URL carries it.
 * @typedef {{routing_key: string, kref: string, details: string, author: string,
 *            username: string, from: string}} Filters
 */

/** @returns {Filters} */
const noFilters = () => ({
  routing_key: "",
  kref: "",
  details: "",
  author: "",
  username: "",
  from: "latest",
});

// -- storage: may be full or unavailable (privacy modes); the page works without it --
const store = {
  get(key) {
    try {
      return JSON.parse(localStorage.getItem(key) || "null");
    } catch {
      return null;
    }
  },
  /** @returns {boolean} whether it was stored */
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
      return true;
    } catch {
      return false;
    }
  },
  remove(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      /* nothing stored */
    }
  },
  keys() {
    try {
      return Object.keys(localStorage);
    } catch {
      return [];
    }
  },
};

// -- workspaces: dashboard tabs never write over each other's panels and rows --
/**
 * Picks the storage this tab keeps its panels, rows and cursors in. A tab holds
 * its workspace's Web Lock while it lives and remembers the workspace in
 * sessionStorage, so a reload gets its own back. A new tab (or the browser
 * after a restart) takes the most recently used workspace no open tab holds
 * whose first panel shows what the URL asks for, rows and all; when there is
 * none, it starts a new one. Never another tab's panels: the URL a person opened
 * decides what the tab shows. Without Web Locks there is one workspace.
 * @param {Filters} linked  the URL's filters
 */
async function claimWorkspace(linked) {
  if (typeof navigator.locks?.request !== "function") return;
  const listed = store.get(WORKSPACES_KEY);
  const known = (Array.isArray(listed) ? listed : []).filter((w) => w && typeof w.id === "string");
  if (!known.some((w) => w.id === "")) known.push({ id: "", seen: 0 });
  known.sort((a, b) => b.seen - a.seen);
  let mine = null;
  try {
    mine = sessionStorage.getItem("kumiho-dashboard:workspace");
  } catch {
    /* a new workspace each time */
  }
  // A workspace with no panels yet fits any URL.
  const fits = (id) => {
    const [first] = savedLayout(id);
    return !first || sameFilters(first.filters, linked);
  };
  const candidates = [...(mine === null ? [] : [mine]), ...known.map((w) => w.id).filter(fits)];
  for (const id of new Set(candidates)) {
    if (await holdWorkspace(id)) return useWorkspace(id, known);
  }
  const id = `w${Math.random().toString(36).slice(2, 10)}`;
  await holdWorkspace(id);
  useWorkspace(id, known);
}

/** Whether this tab now holds the workspace (until it goes), or another tab does. */
function holdWorkspace(id) {
  return new Promise((resolve) => {
    navigator.locks
      .request(`kumiho-dashboard workspace ${id}`, { ifAvailable: true }, (lock) => {
        resolve(lock !== null);
        return lock ? new Promise(() => {}) : undefined;
      })
      .catch(() => resolve(false));
  });
}

/** Record the choice; the least recently used workspaces past MAX_WORKSPACES go, keys and all. */
function useWorkspace(id, known) {
  workspace = id;
  try {
    sessionStorage.setItem("kumiho-dashboard:workspace", id);
  } catch {
    /* chosen again on a reload */
  }
  const list = [{ id, seen: Date.now() }, ...known.filter((w) => w.id !== id)];
  for (const { id: old } of list.splice(MAX_WORKSPACES)) {
    const prefix = workspaceKey(old);
    for (const key of store.keys()) {
      if (key.startsWith(`${prefix}panel`)) store.remove(key);
    }
  }
  store.set(WORKSPACES_KEY, list);
}

// -- theme -------------------------------------------------------------------
function setupTheme() {
  const saved = readTheme();
  if (saved) document.documentElement.dataset.theme = saved;
  $("theme").addEventListener("click", () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === "dark"
      : matchMedia("(prefers-color-scheme: dark)").matches;
    const next = dark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch {
      /* this page only */
    }
    renderPanels();
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", renderPanels);
}

function readTheme() {
  try {
    const value = localStorage.getItem(THEME_KEY);
    return value === "dark" || value === "light" ? value : null;
  } catch {
    return null;
  }
}

// -- small formatting helpers --------------------------------------------------
const asText = (value) => (value == null ? "" : String(value));

function detailsText(details) {
  return Object.entries(details || {})
    .map(([key, value]) => `${key}=${asText(value)}`)
    .join(" ");
}

/** "tag=approved n=1 n=2" → {tag: ["approved"], n: ["1", "2"]} (the gateway's detail filters). */
function parseDetails(text) {
  const details = {};
  for (const pair of text.split(/\s+/)) {
    const eq = pair.indexOf("=");
    if (eq <= 0) continue; // the input's pattern already refuses these
    (details[pair.slice(0, eq)] ??= []).push(pair.slice(eq + 1));
  }
  return details;
}

/** "upstream unavailable (UNAVAILABLE) since 12:00:01, retrying in 2.5 s" */
function upstreamText(status) {
  const since = new Date(status.since).toLocaleTimeString();
  const code = status.code ? ` (${status.code})` : "";
  const retry = status.retry_in_ms == null ? "" : `, retrying in ${(status.retry_in_ms / 1000).toFixed(1)} s`;
  return `upstream ${status.upstream}${code} since ${since}${retry}`;
}

/** The instant as a datetime-local input shows it: the viewer's local time. */
function localInputValue(date) {
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 19);
}

const nowSecond = () => Math.floor(Date.now() / 1000);

// -- the URL carries the first panel's filters (links to the dashboard use it) --
/** @returns {Filters} the URL's filters: none named, every event from the latest */
function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  const filters = noFilters();
  for (const name of FILTER_NAMES) filters[name] = params.get(name) || "";
  filters.from = params.get("from") || "latest";
  return filters;
}

/** @param {Filters} filters */
function writeUrl(filters) {
  const params = new URLSearchParams();
  for (const name of FILTER_NAMES) if (filters[name]) params.set(name, filters[name]);
  if (filters.from !== "latest") params.set("from", filters.from);
  history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
}

const sameFilters = (a, b) => [...FILTER_NAMES, "from"].every((name) => (a[name] || "") === (b[name] || ""));

// -- the chart ---------------------------------------------------------------
/**
 * Bars of events per second, oldest left, in the theme's colours (read from
 * the CSS at every draw, so a theme switch shows at the next one). What was
 * drawn is also left on the element (data-total, data-peak, data-seconds:
 * how many bars, data-bar: their colour) for
 * people and tests that cannot read pixels.
 * @param {HTMLCanvasElement} canvas
 * @param {number[]} counts  WINDOW_S per-second counts, oldest first
 */
function drawChart(canvas, counts) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const style = getComputedStyle(canvas);
  const bar = style.getPropertyValue("--accent").trim();
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = style.getPropertyValue("--line").trim();
  ctx.fillRect(0, height - 1, width, 1); // the zero line, visible with no events
  const peak = Math.max(...counts);
  const step = width / counts.length;
  ctx.fillStyle = bar;
  counts.forEach((n, i) => {
    if (!n) return;
    const h = Math.max(2, Math.round((n / peak) * (height - 2)));
    // Whole pixels: crisp bars, and exact colours for anyone sampling them.
    const x = Math.floor(i * step);
    ctx.fillRect(x, height - h, Math.max(1, Math.floor((i + 1) * step) - x - (step >= 3 ? 1 : 0)), h);
  });
  const total = counts.reduce((sum, n) => sum + n, 0);
  const seconds = counts.filter((n) => n > 0).length;
  Object.assign(canvas.dataset, { total: String(total), peak: String(peak), seconds: String(seconds), bar });
  const label = `events per second over the last 5 minutes: peak ${peak}, total ${total}`;
  canvas.setAttribute("aria-label", label);
  return { total, peak };
}

// -- a panel -------------------------------------------------------------------
/**
 * A kept row: an event or a gap (data: the event, or the gateway.reset), with
 * the time it arrived in ms (for the chart).
 * @typedef {{type: "event"|"gap", data: object, at: number}} Entry
 */

class Panel {
  /**
   * @param {string} id  stable across reloads: names the panel's storage
   * @param {Filters} filters
   */
  constructor(id, filters) {
    this.id = id;
    this.filters = filters;
    this.feed = null;
    this.generation = 0; // callbacks of a replaced feed are ignored
    this.state = "connecting";
    this.status = null;
    this.error = null;
    /** @type {Entry[]} oldest first */
    this.entries = [];
    this.rendered = 0; // entries shown in the table (the rest wait while paused)
    this.counts = new Map(); // routing key → events since the panel last started afresh
    this.buckets = new Map(); // epoch second → events that arrived in it
    this.dirty = false;
    this.rowEntry = new WeakMap();
    this.element = /** @type {HTMLElement} */ ($("panel-template").content.firstElementChild.cloneNode(true));
    this.element.dataset.panelId = id;
    this.form = this.element.querySelector("form");
    this.tbody = this.element.querySelector("tbody");
    this.canvas = this.element.querySelector("canvas");
    this.wire();
    this.writeForm();
  }

  get waiting() {
    return this.entries.length - this.rendered;
  }

  wire() {
    this.form.elements.from.addEventListener("change", () => this.showAt());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.apply(this.readForm());
    });
    this.element.querySelector(".remove").addEventListener("click", () => dashboard.remove(this));
    this.tbody.addEventListener("click", (event) => {
      const tr = event.target.closest("tr.event");
      if (tr) this.toggle(tr);
    });
    this.tbody.addEventListener("keydown", (event) => {
      const tr = event.target.closest("tr.event");
      if (!tr || event.target !== tr || (event.key !== "Enter" && event.key !== " ")) return;
      event.preventDefault(); // Space would scroll
      this.toggle(tr);
    });
  }

  // -- filters --
  showAt() {
    const atTime = this.form.elements.from.value === "timestamp";
    this.element.querySelector(".at").hidden = !atTime;
    this.form.elements.at.required = atTime;
  }

  writeForm() {
    const { elements } = this.form;
    for (const name of FILTER_NAMES) elements[name].value = this.filters[name];
    const from = this.filters.from;
    if (from === "latest" || from === "beginning") elements.from.value = from;
    else {
      elements.from.value = "timestamp";
      elements.at.value = localInputValue(new Date(from));
    }
    this.showAt();
    this.element.querySelector(".panel-title").textContent = this.title();
  }

  /** @returns {Filters} */
  readForm() {
    const { elements } = this.form;
    const filters = noFilters();
    for (const name of FILTER_NAMES) filters[name] = elements[name].value.trim();
    // A local time as the UTC instant it is: the same wherever the link is opened.
    const atTime = elements.from.value === "timestamp";
    filters.from = atTime ? new Date(elements.at.value).toISOString() : elements.from.value;
    return filters;
  }

  title() {
    const parts = FILTER_NAMES.filter((name) => this.filters[name]).map(
      (name) => `${name.replace("_", " ")} ${this.filters[name]}`,
    );
    return parts.length ? parts.join(" · ") : "all events";
  }

  /** New filters: start afresh from their own start position. */
  apply(filters) {
    this.filters = filters;
    this.writeForm();
    this.clear();
    this.feed?.forget();
    this.start();
    dashboard.saveLayout();
  }

  // -- the feed --
  start() {
    const generation = ++this.generation;
    const old = this.feed;
    this.feed = null;
    old?.close();
    this.state = "connecting";
    this.status = null;
    this.error = null;
    const mine = (fn) => (...args) => {
      if (generation === this.generation) fn(...args);
    };
    const f = this.filters;
    this.feed = subscribe({
      routingKey: f.routing_key,
      kref: f.kref,
      details: parseDetails(f.details),
      author: f.author,
      username: f.username,
      from: f.from,
      // The kept rows end where the panel's cursor does; resuming after the
      // last kept event also covers a page that died before saving its rows.
      cursor: this.lastCursor() || undefined,
      storageKey: panelKey(this.id, "cursor"),
      onEvent: mine((event) => this.add({ type: "event", data: event, at: Date.now() })),
      onReset: mine((reset) => this.add({ type: "gap", data: reset, at: Date.now() })),
      onStatus: mine((status) => {
        this.status = status;
        dashboard.renderStatus();
      }),
      onStateChange: mine((state) => {
        this.state = state;
        if (state === "reconnecting") this.status = null;
        if (state === "live") this.error = null; // a retryable error is over
        dashboard.renderStatus();
      }),
      onError: mine((error) => {
        this.error = error;
        dashboard.renderStatus();
      }),
    });
    dashboard.publishFeeds();
  }

  lastCursor() {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const entry = this.entries[i];
      if (entry.type === "event" && entry.data.cursor) return asText(entry.data.cursor);
    }
    return "";
  }

  close() {
    this.generation += 1;
    this.feed?.close();
  }

  // -- entries --
  /** @param {Entry} entry */
  add(entry) {
    this.entries.push(entry);
    if (entry.type === "event") {
      this.count(asText(entry.data.routing_key));
      const second = Math.floor(entry.at / 1000);
      this.buckets.set(second, (this.buckets.get(second) || 0) + 1);
      dashboard.arrived(entry.data);
    }
    this.trimEntries();
    this.dirty = true;
    if (!dashboard.paused) this.renderRows();
    dashboard.scheduleRender();
  }

  count(key) {
    if (!this.counts.has(key) && this.counts.size >= MAX_KEYS) {
      let rarest = key;
      for (const [other, n] of this.counts) if (n < (this.counts.get(rarest) ?? Infinity)) rarest = other;
      this.counts.delete(rarest);
    }
    this.counts.set(key, (this.counts.get(key) || 0) + 1);
  }

  trimEntries() {
    const extra = this.entries.length - MAX_ROWS;
    if (extra <= 0) return;
    this.entries.splice(0, extra);
    this.rendered = Math.max(0, this.rendered - extra);
  }

  clear() {
    this.entries = [];
    this.rendered = 0;
    this.counts.clear();
    this.buckets.clear();
    this.tbody.replaceChildren();
    this.dirty = true;
    this.render();
  }

  // -- the table --
  /** Shows the entries not yet in the table, newest on top. */
  renderRows() {
    for (const entry of this.entries.slice(this.rendered)) {
      this.tbody.prepend(entry.type === "gap" ? gapRow(entry.data) : this.eventRow(entry));
    }
    this.rendered = this.entries.length;
    this.trimRows();
    this.element.querySelector(".empty").hidden = this.tbody.childElementCount > 0;
  }

  /** At most MAX_ROWS rows (an open row's details go with it). */
  trimRows() {
    let rows = this.tbody.querySelectorAll(":scope > tr:not(.detail)").length;
    while (rows > MAX_ROWS) {
      const last = this.tbody.lastElementChild;
      last.remove();
      if (!last.classList.contains("detail")) rows -= 1;
    }
  }

  /** @param {Entry} entry */
  eventRow(entry) {
    const event = entry.data;
    const tr = row(
      [
        [asText(event.timestamp).replace("T", " ").replace("Z", ""), "time"],
        [asText(event.routing_key), "key"],
        [asText(event.kref), "kref"],
        [asText(event.username || event.author), "author"],
        [detailsText(event.details), "details"],
      ],
      "event",
    );
    tr.tabIndex = 0;
    tr.setAttribute("aria-expanded", "false");
    tr.dataset.cursor = asText(event.cursor);
    tr.dataset.routingKey = asText(event.routing_key);
    this.rowEntry.set(tr, entry);
    return tr;
  }

  /** Opens a row into its full event, or closes it again. */
  toggle(tr) {
    const open = tr.nextElementSibling?.classList.contains("detail");
    if (open) tr.nextElementSibling.remove();
    else tr.after(detailRow(this.rowEntry.get(tr).data));
    tr.setAttribute("aria-expanded", String(!open));
  }

  // -- the summary --
  render() {
    const counts = this.chartCounts();
    const { total, peak } = drawChart(this.canvas, counts);
    this.element.querySelector(".peak").textContent = String(peak);
    this.element.querySelector(".total").textContent = String(total);
    this.renderKeys();
    this.element.querySelector(".panel-stats").textContent = `${this.entries.length} rows kept`;
    this.element.querySelector(".empty").hidden = this.tbody.childElementCount > 0;
  }

  /** @returns {number[]} the last WINDOW_S seconds, oldest first */
  chartCounts() {
    const end = nowSecond();
    for (const second of this.buckets.keys()) if (second <= end - WINDOW_S) this.buckets.delete(second);
    return Array.from({ length: WINDOW_S }, (_, i) => this.buckets.get(end - WINDOW_S + 1 + i) || 0);
  }

  renderKeys() {
    const list = this.element.querySelector(".key-counts");
    const sorted = [...this.counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    const top = sorted.slice(0, TOP_KEYS);
    const shown = [...list.querySelectorAll(".key-count")];
    // Same keys in the same order: update the numbers in place, so a focused
    // button keeps its focus while counts tick up.
    if (shown.length === top.length && shown.every((button, i) => button.dataset.key === top[i][0])) {
      shown.forEach((button, i) => (button.querySelector(".count").textContent = String(top[i][1])));
    } else {
      list.replaceChildren(...top.map(([key, count]) => this.keyItem(key, count)));
    }
    const more = sorted.length - top.length;
    list.dataset.more = more > 0 ? `+${more} more` : "";
  }

  keyItem(key, count) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "key-count";
    button.dataset.key = key;
    button.title = `show only ${key}`;
    button.setAttribute("aria-pressed", String(this.filters.routing_key === key));
    button.append(span(key, "name"), span(String(count), "count"));
    button.addEventListener("click", () => {
      this.form.elements.routing_key.value = key;
      this.apply(this.readForm());
    });
    li.append(button);
    return li;
  }

  // -- persistence --
  restore() {
    const saved = store.get(panelKey(this.id, "events"));
    if (!saved || !Array.isArray(saved.entries)) return;
    this.entries = saved.entries.filter((e) => e && (e.type === "event" || e.type === "gap") && e.data);
    this.counts = new Map(Array.isArray(saved.counts) ? saved.counts : []);
    this.buckets = new Map(Array.isArray(saved.buckets) ? saved.buckets : []);
    this.renderRows();
  }

  /** Saves the kept rows; on a full storage, fewer of them (the newest, so the cursor still matches). */
  save() {
    if (!this.dirty) return;
    this.dirty = false;
    this.chartCounts(); // drops seconds outside the window
    const base = { counts: [...this.counts], buckets: [...this.buckets] };
    for (let keep = this.entries.length; ; keep = Math.floor(keep / 2)) {
      const entries = this.entries.slice(this.entries.length - keep);
      if (store.set(panelKey(this.id, "events"), { ...base, entries })) return;
      if (keep === 0) return;
    }
  }

  forgetStorage() {
    this.feed?.forget();
    store.remove(panelKey(this.id, "events"));
    store.remove(panelKey(this.id, "cursor"));
  }
}

// -- rows (text only) ------------------------------------------------------------
function span(text, className) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function row(cells, className) {
  const tr = document.createElement("tr");
  tr.className = className;
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    td.className = cls;
    td.title = text; // the whole value on hover; the cell itself is cut short
    tr.append(td);
  }
  return tr;
}

function gapRow(reset) {
  return row(
    [
      ["", "time"],
      ["gateway.reset", "key"],
      [`gap: ${asText(reset.reason)} (requested ${asText(reset.requested_cursor) || "none"})`, "kref"],
      ["", "author"],
      [`resumed from ${asText(reset.resumed_from)}`, "details"],
    ],
    "gap",
  );
}

/** The full event, pretty-printed, with buttons to copy its kref and cursor. */
function detailRow(event) {
  const tr = document.createElement("tr");
  tr.className = "detail";
  const td = document.createElement("td");
  td.colSpan = 5;
  const actions = document.createElement("div");
  actions.className = "detail-actions";
  const note = span("", "copied");
  note.setAttribute("role", "status");
  let timer = 0;
  const tell = (text) => {
    note.textContent = text;
    clearTimeout(timer);
    timer = setTimeout(() => (note.textContent = ""), 2000);
  };
  const copyKref = copyButton("copy kref", event.kref, tell);
  actions.append(copyKref, copyButton("copy cursor", event.cursor, tell), note);
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(event, null, 2);
  td.append(actions, pre);
  tr.append(td);
  return tr;
}

/** @param {(text: string) => void} tell  shows the user what happened */
function copyButton(label, value, tell) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(asText(value));
      tell("copied");
    } catch {
      tell("could not copy"); // no permission, or not a secure context
    }
  });
  return button;
}

// -- the dashboard ---------------------------------------------------------------
const dashboard = {
  /** @type {Panel[]} */
  panels: [],
  paused: false,
  arrivals: [], // [time, cursor] of the last second's events, over all panels
  renderQueued: false,

  /** @param {Filters} linked  the URL's filters */
  load(linked) {
    for (const { id, filters } of initialLayout(linked)) {
      const panel = new Panel(id, filters);
      panel.restore();
      this.mount(panel);
    }
    this.saveLayout(); // and the URL, which now names the first panel's filters
    for (const panel of this.panels) panel.start();
    this.render();
  },

  /** @param {Panel} panel */
  mount(panel) {
    this.panels.push(panel);
    $("panels").append(panel.element);
    resized.observe(panel.canvas);
    this.renumber();
  },

  add() {
    const id = String(Math.max(0, ...this.panels.map((p) => Number(p.id) || 0)) + 1);
    const panel = new Panel(id, noFilters());
    panel.forgetStorage(); // a removed panel's id comes back empty, even after a crash
    this.mount(panel);
    panel.start();
    this.saveLayout();
    panel.render();
    panel.form.elements.routing_key.focus();
  },

  /** @param {Panel} panel */
  remove(panel) {
    if (this.panels.length === 1) return;
    panel.close();
    panel.forgetStorage();
    panel.element.remove();
    resized.unobserve(panel.canvas);
    this.panels = this.panels.filter((p) => p !== panel);
    this.renumber();
    this.saveLayout();
    this.publishFeeds();
    this.renderStatus();
  },

  renumber() {
    this.panels.forEach((panel, i) => panel.element.setAttribute("aria-label", `panel ${i + 1}`));
    document.body.classList.toggle("single", this.panels.length === 1);
  },

  saveLayout() {
    store.set(panelsKey(), this.panels.map(({ id, filters }) => ({ id, filters })));
    writeUrl(this.panels[0].filters);
  },

  /** For the console and the browser tests: one feed per panel. */
  publishFeeds() {
    window.kumihoFeeds = this.panels.map((panel) => panel.feed);
    window.kumihoFeed = window.kumihoFeeds[0];
  },

  arrived(event) {
    this.arrivals.push([performance.now(), asText(event.cursor)]);
    if (event.cursor) $("cursor").textContent = asText(event.cursor);
  },

  setPaused(value) {
    this.paused = value;
    $("pause").setAttribute("aria-pressed", String(value));
    $("pause").textContent = value ? "resume" : "pause";
    if (!value) for (const panel of this.panels) panel.renderRows();
    this.renderWaiting();
  },

  clear() {
    for (const panel of this.panels) panel.clear();
    this.renderWaiting();
  },

  renderWaiting() {
    const waiting = this.panels.reduce((sum, panel) => sum + panel.waiting, 0);
    $("waiting").textContent = this.paused && waiting ? `${waiting} waiting` : "";
  },

  /** The worst state of any panel, and why the upstream is down if it is. */
  renderStatus() {
    const states = this.panels.map((panel) => panel.state);
    const state = STATE_ORDER.find((s) => states.includes(s)) || "connecting";
    const badge = $("state");
    // Only real changes: observers (and screen readers) see each state once.
    if (badge.dataset.state !== state) badge.dataset.state = state;
    const failed = this.panels.find((panel) => panel.error);
    const text = failed ? `${state}: ${asText(failed.error.message)}` : state;
    if (badge.textContent !== text) badge.textContent = text;
    const down = this.panels.find((panel) => panel.state === "upstream-down" && panel.status);
    $("upstream").textContent = down ? upstreamText(down.status) : "";
    const reconnects = this.panels.map((panel) => panel.feed?.reconnects() ?? 0);
    $("reconnects").textContent = String(Math.max(0, ...reconnects));
    $("connection").textContent = CONNECTION[this.panels[0]?.feed?.role()] || "";
  },

  /** Events per second over all panels; an event two panels both show counts once. */
  renderRate() {
    const now = performance.now();
    this.arrivals = this.arrivals.filter(([t]) => now - t < 1000);
    const distinct = new Set(this.arrivals.map(([t, cursor]) => cursor || t));
    $("rate").textContent = String(distinct.size);
  },

  /** Coalesces the summaries' redraws to one per frame however fast events come. */
  scheduleRender() {
    this.renderWaiting();
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      renderPanels();
    });
  },

  render() {
    renderPanels();
    this.renderStatus();
    this.renderRate();
    this.renderWaiting();
  },

  save() {
    for (const panel of this.panels) panel.save();
  },
};

function renderPanels() {
  for (const panel of dashboard.panels) panel.render();
}

// A chart is drawn at its element's size in device pixels: redraw when that changes.
const resized = new ResizeObserver(renderPanels);

/** A workspace's saved panels (none when it has none or they are unreadable). */
function savedLayout(id) {
  const saved = store.get(`${workspaceKey(id)}panels`);
  const valid = (p) => p && typeof p.id === "string" && p.filters && typeof p.filters === "object";
  const layout = Array.isArray(saved) ? saved.filter(valid) : [];
  return layout.map((p) => ({ id: p.id, filters: { ...noFilters(), ...p.filters } }));
}

/**
 * This workspace's saved panels, the first one showing what the URL asks for
 * (other filters there, its rows and cursor go: it starts afresh).
 * @param {Filters} linked  the URL's filters
 */
function initialLayout(linked) {
  const layout = savedLayout(workspace);
  if (!layout.length) return [{ id: "1", filters: linked }];
  if (!sameFilters(linked, layout[0].filters)) {
    for (const what of ["events", "cursor"]) store.remove(panelKey(layout[0].id, what));
    layout[0] = { id: layout[0].id, filters: linked };
  }
  return layout;
}

// -- keys and buttons ----------------------------------------------------------------
function setupControls() {
  $("pause").addEventListener("click", () => dashboard.setPaused(!dashboard.paused));
  $("clear").addEventListener("click", () => dashboard.clear());
  $("add-panel").addEventListener("click", () => dashboard.add());
  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest("input, select, textarea");
    if (typing || event.metaKey || event.ctrlKey || event.altKey) return;
    if (event.key === "p") dashboard.setPaused(!dashboard.paused);
    else if (event.key === "c") dashboard.clear();
    else if (event.key === "/") {
      event.preventDefault();
      dashboard.panels[0]?.form.elements.routing_key.focus();
    }
  });
  // Rows are saved a second at a time, and whenever the page may go away.
  addEventListener("pagehide", () => dashboard.save());
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") dashboard.save();
  });
  setInterval(() => dashboard.renderRate(), 250);
  setInterval(() => {
    dashboard.save();
    renderPanels(); // the chart moves on a second even when nothing arrives
  }, 1000);
}

setupTheme();
setupControls();
const opened = filtersFromUrl(); // what the person opened decides what this tab shows
claimWorkspace(opened).then(() => dashboard.load(opened));
