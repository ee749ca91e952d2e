// kumiho-events.js: live Kumiho events in a browser, resumable across reloads,
// with every tab of a browser sharing one connection.
//
//   import { subscribe } from "/kumiho-events.js";
//   const feed = subscribe({ routingKey: "revision.*", onEvent: (e) => console.log(e.kref) });
//   feed.close();
//
// It reads the gateway it was loaded from (its /events), unless given a `url`: a page of
// another origin may import it straight from the gateway.
//
// Over HTTP/1.1 a browser holds at most six connections to a host, and each
// EventSource keeps one for good. So the tabs of one origin elect a leader
// (Web Locks); the leader holds one EventSource for the union of every tab's
// subscriptions and relays what it reads on a BroadcastChannel; each tab
// matches the events against its own subscriptions' filters (the gateway's
// rules, ported below). When the leader tab goes, the next tab in the lock's
// queue takes over from the last id relayed, or, before the first, from the
// moment the stream first opened. A subscription that starts in the past (a
// stored cursor, `from`) polls /events/poll while the gateway says "more",
// then continues on the shared stream, with no gap and no repeat. Without
// those browser APIs (or with `shared: false`, or a consumer group) each
// subscription is one EventSource of its own.
//
// Either way it parses each event, reports gaps (gateway.reset), the
// upstream's state (gateway.status) and terminal errors (gateway.error),
// tracks the connection state, and keeps the last cursor in localStorage so
// a reloaded page continues where it left off. No dependencies.

/**
 * One Kumiho event, as the gateway's data: line carries it.
 * @typedef {Object} KumihoEvent
 * @property {string} routing_key   e.g. "revision.tagged"
 * @property {string} kref          e.g. "kref://film/chars/hero.model?r=3"
 * @property {string} timestamp     ISO 8601
 * @property {string} author        user id
 * @property {string} username
 * @property {Object<string, string>} details  e.g. {tag: "approved"}
 * @property {string} cursor        "" when the upstream tier has no cursors
 */

/**
 * A gap: the requested resume point could not be honoured.
 * @typedef {Object} KumihoReset
 * @property {string} reason            cursor_expired | cursor_unknown | cursor_invalid | cursor_unsupported | stream_interrupted
 * @property {string} requested_cursor
 * @property {"earliest"|"latest"} resumed_from
 */

/**
 * The upstream's state, as the gateway reports it at the start of every stream and on each change.
 * @typedef {Object} KumihoStatus
 * @property {"live"|"unavailable"|"failing"} upstream
 * @property {string|null} code         the gRPC status name behind a state other than live
 * @property {number|null} retry_in_ms  when the gateway tries again
 * @property {string} since             ISO 8601
 */

/**
 * An error: the stream ends. Retryable ones (a gateway at its limits) reconnect by themselves;
 * any other stops the feed. The gateway's codes, or "not_a_gateway": the URL answered a status
 * retrying cannot change (a 404) or a 200 that is no poll answer, without the gateway's error
 * envelope (a wrong `url`, or a proxy in the way).
 * @typedef {Object} KumihoError
 * @property {string} code
 * @property {string} message
 * @property {boolean} retryable
 * @property {number} [status]           the HTTP status, for "not_a_gateway"
 */

/**
 * "live" only while the gateway is connected and says its upstream is live;
 * "upstream-down": connected, but the upstream is unavailable or failing (see status()).
 * @typedef {"connecting"|"live"|"upstream-down"|"reconnecting"|"stopped"} ConnectionState
 */

/**
 * @typedef {Object} SubscribeOptions
 * @property {string} [url]                     the gateway's /events URL; default: the /events beside
 *                                              this module, on the gateway that served it
 * @property {string|string[]} [routingKey]     routing-key filter, e.g. "revision.*"; a list means any of them
 * @property {string|string[]} [kref]           kref filter, e.g. "kref://film/**"; a list likewise
 * @property {Object<string, string|string[]>} [details]  detail filters, e.g. {tag: "approved"} (globs, lists)
 * @property {string|string[]} [author]         only events by these authors (user ids; globs)
 * @property {string|string[]} [username]       only events by these usernames (globs)
 * @property {string} [consumerGroup]           a Kumiho consumer group (Enterprise): share the events with its other members
 * @property {string} [from]                    "latest" (default), "beginning" or an ISO timestamp; used when no cursor is stored
 * @property {string} [cursor]                  resume after this cursor (wins over the stored one)
 * @property {string|(() => string|Promise<string>)} [accessToken]  for --auth passthrough/service when no cookie or
 *                                              header can carry it. A function is called for a fresh token on every
 *                                              connect (and poll), and at once when the gateway ends a stream with
 *                                              gateway.error token_expired, so a short-lived token is refreshed without
 *                                              a reload and without losing an event
 * @property {boolean} [withCredentials=false]  send cookies cross-origin (kumiho_token)
 * @property {boolean} [shared=true]            share one connection with the other subscriptions of this browser
 * @property {string|null} [storageKey]         localStorage key of the last cursor; null: do not persist.
 *                                              Default "kumiho-events:cursor", the gateway URL and a fingerprint
 *                                              of the credential, plus "?" and the filters when there are any
 * @property {(event: KumihoEvent) => void} [onEvent]
 * @property {(reset: KumihoReset) => void} [onReset]
 * @property {(status: KumihoStatus) => void} [onStatus]
 * @property {(state: ConnectionState, reconnects: number) => void} [onStateChange]
 * @property {(error: KumihoError) => void} [onError]
 */

/**
 * @typedef {Object} Feed
 * @property {() => void} close          stop for good
 * @property {() => ConnectionState} state
 * @property {() => string} cursor       the last cursor seen ("" if none)
 * @property {() => number} reconnects   how many times the connection was lost and retried
 * @property {() => KumihoStatus|null} status  the upstream's last reported state
 * @property {() => void} forget         drop the stored cursor and stop storing it (start afresh next time)
 * @property {() => "leader"|"follower"|"own"} role  whether this tab holds the shared connection,
 *                                                   reads it through another tab, or has a connection of its own
 */

/**
 * What a subscription asks for, in the gateway's parameter names; lists sorted, without repeats.
 * @typedef {Object} Filter
 * @property {string[]} routing_key
 * @property {string[]} kref
 * @property {Object<string, string[]>} details
 * @property {string[]} author
 * @property {string[]} username
 */

/**
 * Subscribe to Kumiho events through the gateway.
 * @param {SubscribeOptions} [options]
 * @returns {Feed}
 */
export function subscribe(options = {}) {
  const filter = filterOf(options);
  const query = filterQuery(filter).toString();
  // A cursor is a position in what one credential reads at one gateway: another's is no start.
  const storageKey =
    options.storageKey === undefined
      ? `kumiho-events:cursor ${scopeOf(options)}${query ? `?${query}` : ""}`
      : options.storageKey;
  const stored = storageKey ? readStorage(storageKey) : "";
  const start = { cursor: options.cursor || stored || "", from: options.from || "" };
  const sharing =
    options.shared !== false &&
    !options.consumerGroup && // a group splits events between connections: sharing one would defeat it
    typeof BroadcastChannel === "function" &&
    typeof navigator.locks?.request === "function";
  const feed = new Feed(options, filter, storageKey, start.cursor);
  if (sharing) hubFor(options).add(feed, start);
  else ownConnection(feed, start);
  return feed.api();
}

// -- the filter, as the gateway reads it -------------------------------------

/** @param {string|string[]|undefined} value  a list, or a comma-separated string */
function entries(value) {
  const list = Array.isArray(value) ? value : value ? [value] : [];
  return [...new Set(list.flatMap((v) => String(v).split(",")))].sort();
}

/** @param {SubscribeOptions} options @returns {Filter} */
function filterOf(options) {
  /** @type {Object<string, string[]>} */
  const details = {};
  for (const key of Object.keys(options.details || {}).sort()) {
    details[key] = entries(options.details?.[key]);
  }
  return {
    routing_key: entries(options.routingKey),
    kref: entries(options.kref),
    details,
    author: entries(options.author),
    username: entries(options.username),
  };
}

/** The filter as query parameters (lists comma-joined). @param {Filter} filter */
function filterQuery(filter) {
  const params = new URLSearchParams();
  for (const name of /** @type {const} */ (["routing_key", "kref", "author", "username"])) {
    if (filter[name].length) params.set(name, filter[name].join(","));
  }
  for (const [key, patterns] of Object.entries(filter.details)) {
    params.set(`details.${key}`, patterns.join(","));
  }
  return params;
}

// The gateway allows this many patterns in one list; a union with more is left unfiltered.
const MAX_ENTRIES = 16;

/**
 * A filter that lets through every event any of ``filters`` wants (and maybe more):
 * each part is the union of that part of every filter, or nothing when one does not ask for it.
 * @param {Filter[]} filters @returns {Filter}
 */
function union(filters) {
  /** @param {(f: Filter) => string[]|undefined} part */
  const joined = (part) => {
    const all = filters.map(part);
    if (!all.length || all.some((list) => !list?.length)) return [];
    const merged = entries(all.flat());
    return merged.length > MAX_ENTRIES ? [] : merged;
  };
  /** @type {Object<string, string[]>} */
  const details = {};
  for (const key of new Set(filters.flatMap((f) => Object.keys(f.details)))) {
    const patterns = joined((f) => f.details[key]);
    if (patterns.length) details[key] = patterns;
  }
  return {
    routing_key: joined((f) => f.routing_key),
    kref: joined((f) => f.kref),
    details: Object.fromEntries(Object.entries(details).sort()),
    author: joined((f) => f.author),
    username: joined((f) => f.username),
  };
}

// The gateway's matching rules (gateway/matching.py; tests/test_tabs.py holds the two to
// agreement). Routing keys split on ".", krefs on "/": "*" alone is one segment, "*" inside
// one any run but the separator, "#" or "**" any number of segments. Details and actors are
// whole-value globs where "*" is any run of characters. As there, no choice is ever undone
// (each glob piece and each run of segments is taken at its leftmost place), so no pattern
// can make matching take more than value times pattern.
const MATCH_ALL = new Set(["", "*", "#", "**"]);
const MULTI = new Set(["#", "**"]);

/** @param {string} pattern @returns {((value: string) => boolean)|null} null: everything */
function globMatcher(pattern) {
  if (pattern === "*") return null;
  const pieces = pattern.split("*");
  if (pieces.length === 1) return (value) => value === pattern;
  const first = pieces[0];
  const last = pieces[pieces.length - 1];
  const middle = pieces.slice(1, -1);
  return (value) => {
    if (value.length < first.length + last.length || !value.startsWith(first) || !value.endsWith(last)) {
      return false;
    }
    const end = value.length - last.length;
    let at = first.length;
    for (const piece of middle) {
      const found = value.indexOf(piece, at);
      if (found < 0 || found + piece.length > end) return false;
      at = found + piece.length;
    }
    return true;
  };
}

/** @typedef {((segment: string) => boolean)[]} Run  one matcher per consecutive segment */

/** @param {Run} run @param {string[]} segments @param {number} at */
const runAt = (run, segments, at) => run.every((match, i) => match(segments[at + i]));

/** @param {string} pattern @param {string} sep @returns {((value: string) => boolean)|null} null: everything */
function segmentMatcher(pattern, sep) {
  if (MATCH_ALL.has(pattern)) return null;
  /** @type {Run[]} runs of one-segment matchers, cut at the multi-wildcards */
  const runs = [[]];
  for (const part of pattern.split(sep)) {
    if (MULTI.has(part)) {
      // "**.**" is "**": consecutive multi-wildcards match what one matches.
      if (runs[runs.length - 1].length || runs.length === 1) runs.push([]);
    } else {
      const nonEmpty = (/** @type {string} */ segment) => segment !== "";
      runs[runs.length - 1].push(part === "*" ? nonEmpty : /** @type {(s: string) => boolean} */ (globMatcher(part)));
    }
  }
  if (runs.length === 2 && !runs[0].length && !runs[1].length) return null;
  if (runs.length === 1) {
    const only = runs[0];
    return (value) => {
      const segments = value.split(sep);
      return segments.length === only.length && runAt(only, segments, 0);
    };
  }
  const first = runs[0];
  const last = runs[runs.length - 1];
  const middle = runs.slice(1, -1);
  return (value) => {
    const segments = value.split(sep);
    const end = segments.length - last.length;
    if (end < first.length || !runAt(first, segments, 0) || !runAt(last, segments, end)) return false;
    let at = first.length;
    for (const run of middle) {
      while (at + run.length <= end && !runAt(run, segments, at)) at += 1;
      if (at + run.length > end) return false;
      at += run.length;
    }
    return true;
  };
}

/** @param {string[]} patterns @param {(p: string) => ((v: string) => boolean)|null} compile */
function anyOf(patterns, compile) {
  const matchers = patterns.map(compile);
  if (!matchers.length || matchers.includes(null)) return null;
  return (/** @type {string} */ value) => matchers.some((match) => /** @type {Function} */ (match)(value));
}

/**
 * Whether an event is one a filter wants, by the gateway's rules.
 * @param {Filter} filter @returns {(event: KumihoEvent) => boolean}
 */
export function matcher(filter) {
  /** @type {((event: KumihoEvent) => boolean)[]} */
  const checks = [];
  const routing = anyOf(filter.routing_key, (p) => segmentMatcher(p, "."));
  if (routing) checks.push((e) => routing(e.routing_key));
  const kref = anyOf(filter.kref, (p) => segmentMatcher(p, "/"));
  // A kref matches with or without its "?r=..." query.
  if (kref) checks.push((e) => kref(e.kref) || (e.kref.includes("?") && kref(e.kref.slice(0, e.kref.indexOf("?")))));
  for (const [key, patterns] of Object.entries(filter.details)) {
    const value = anyOf(patterns, globMatcher) || (() => true); // "*": the detail is there
    checks.push((e) => Object.hasOwn(e.details || {}, key) && value(e.details[key]));
  }
  const author = anyOf(filter.author, globMatcher);
  if (author) checks.push((e) => author(e.author));
  const username = anyOf(filter.username, globMatcher);
  if (username) checks.push((e) => username(e.username));
  return (event) => checks.every((check) => check(event));
}

// -- one subscription, whichever connection feeds it --------------------------

// -- cursors: opaque, but ordered when shaped <ms>-<seq> (gateway/cursor.py) ------

const CURSOR_PART = /^[0-9]{1,20}$/;

/** The (ms, seq) order key of a cursor, or null when it has another shape. @param {string} cursor */
function cursorKey(cursor) {
  const dash = cursor.indexOf("-");
  const ms = cursor.slice(0, dash);
  const seq = cursor.slice(dash + 1);
  if (dash < 0 || !CURSOR_PART.test(ms) || !CURSOR_PART.test(seq)) return null;
  return [BigInt(ms), BigInt(seq)];
}

/**
 * Whether cursor `a` comes after `b`: by order when both have the <ms>-<seq> shape; otherwise
 * only telling an equal one apart (null: cannot tell).
 * @param {string} a @param {string} b @returns {boolean|null}
 */
function after(a, b) {
  if (!b) return true;
  if (a === b) return false;
  const [ka, kb] = [cursorKey(a), cursorKey(b)];
  if (!ka || !kb) return null;
  return ka[0] > kb[0] || (ka[0] === kb[0] && ka[1] > kb[1]);
}

class Feed {
  /**
   * @param {SubscribeOptions} options @param {Filter} filter
   * @param {string|null} storageKey @param {string} cursor
   */
  constructor(options, filter, storageKey, cursor) {
    this.options = options;
    this.filter = filter;
    this.wants = matcher(filter);
    this.storageKey = storageKey;
    this.cursor = cursor;
    /** @type {ConnectionState} */
    this.state = "connecting";
    this.reconnects = 0;
    /** @type {KumihoStatus|null} */
    this.status = null;
    /** @type {"leader"|"follower"|"own"} */
    this.role = "own";
    this.closed = false;
    /** @type {() => void} */
    this.onClose = () => {};
    this.storedAt = 0;
  }

  /** @returns {Feed} the public face */
  api() {
    return /** @type {any} */ ({
      close: () => this.close(),
      state: () => this.state,
      cursor: () => this.cursor,
      reconnects: () => this.reconnects,
      status: () => this.status,
      role: () => this.role,
      forget: () => {
        if (this.storageKey) removeStorage(this.storageKey);
        this.storageKey = null; // and nothing written there again, not even at close
      },
    });
  }

  /** @param {ConnectionState} next */
  setState(next) {
    if (next === this.state || this.state === "stopped") return;
    if (next === "reconnecting") this.reconnects += 1;
    this.state = next;
    this.options.onStateChange?.(next, this.reconnects);
  }

  /**
   * Hand an event to the page, unless it is a repeat: the feed's one repeat filter drops an id at
   * or before its position (by order; an id of another shape only when it is the same). Whatever
   * delivers here (the shared stream, a catch-up poll, an EventSource of its own) may overlap.
   * @param {KumihoEvent} event @param {string} [id] its id on the stream (default: its cursor)
   */
  deliver(event, id = event.cursor) {
    if (this.closed) return;
    if (id) {
      if (after(id, this.cursor) === false) return;
      this.advance(id, true);
    }
    this.options.onEvent?.(event);
  }

  /**
   * The position to resume from (never moved back); an unwanted event's is stored at most once
   * a second.
   * @param {string} cursor @param {boolean} [now]
   */
  advance(cursor, now = false) {
    if (after(cursor, this.cursor) === false) return;
    this.cursor = cursor;
    if (!this.storageKey || (!now && Date.now() - this.storedAt < 1000)) return;
    this.storedAt = Date.now();
    writeStorage(this.storageKey, cursor);
  }

  /** A gap: the old position means nothing now (what follows may sort before it). @param {KumihoReset} reset */
  reset(reset) {
    this.cursor = "";
    this.options.onReset?.(reset);
  }

  /** @param {KumihoStatus} status */
  report(status) {
    this.status = status;
    this.options.onStatus?.(status);
    this.setState(status.upstream === "live" ? "live" : "upstream-down");
  }

  /** @param {KumihoError} error */
  fail(error) {
    this.options.onError?.(error);
    if (!error.retryable) this.close();
  }

  /** Store the cursor now (advance() stores an unwanted event's at most once a second). */
  flush() {
    if (this.storageKey && this.cursor) writeStorage(this.storageKey, this.cursor);
  }

  close() {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.setState("stopped");
    this.onClose();
  }
}

/** @param {MessageEvent|Event} message */
const json = (message) => JSON.parse(/** @type {MessageEvent} */ (message).data);

// The /events beside this module, on the gateway that served it. A module not loaded over
// HTTP (bundled, or read from a file) falls back to the page's own /events.
const DEFAULT_URL = /^https?:$/.test(new URL(import.meta.url).protocol)
  ? new URL("events", import.meta.url).href
  : "/events";

/** The gateway's /events URL. @param {SubscribeOptions} options */
const gatewayUrl = (options) => new URL(options.url || DEFAULT_URL, location.href);

/**
 * The gateway URL with the filter, the credential and a start.
 * @param {SubscribeOptions} options @param {Filter} filter @param {Start} start
 * @param {string} token  the access token to send ("" for none): see tokenOf
 */
function streamUrl(options, filter, start, token) {
  const url = gatewayUrl(options);
  for (const [name, value] of filterQuery(filter)) url.searchParams.set(name, value);
  if (options.consumerGroup) url.searchParams.set("consumer_group", options.consumerGroup);
  if (start.cursor) url.searchParams.set("cursor", start.cursor);
  else if (start.from) url.searchParams.set("from", start.from);
  if (token) url.searchParams.set("access_token", token);
  return url;
}

// The gateway's code for a token past its exp (gateway/auth.py).
const TOKEN_EXPIRED = "token_expired";

/** Whether the access token is a function, asked again for each connection. @param {SubscribeOptions} options */
const refreshes = (options) => typeof options.accessToken === "function";

/**
 * The access token to send now: the option itself, or what its function gives (awaited).
 * Throws when the function fails or gives no string: the connection is then tried again later.
 * @param {SubscribeOptions} options @returns {Promise<string>}
 */
async function tokenOf(options) {
  const token = refreshes(options)
    ? await /** @type {() => string|Promise<string>} */ (options.accessToken)()
    : options.accessToken || "";
  if (typeof token !== "string") throw new TypeError("accessToken() must give a string");
  return token;
}

/**
 * Feed one subscription from an EventSource of its own (no sharing).
 * @param {Feed} feed @param {Start} start
 */
function ownConnection(feed, start) {
  const stream = new Stream(feed.options, feed.filter, start, {
    // Its id, not the event's cursor: on a tier without cursors the gateway's own id resumes.
    event: (message) => feed.deliver(json(message), message.lastEventId),
    status: (status) => feed.report(status),
    reset: (reset) => feed.reset(reset),
    error: (error) => feed.fail(error),
    state: async (state) => {
      if (state !== "stopped") {
        feed.setState(state);
        return;
      }
      feed.setState("reconnecting");
      const why = await refusal(feed.options, feed.filter, () => !feed.closed);
      if (why?.error) feed.fail({ ...why.error, retryable: false });
      else if (why) stream.open();
    },
  });
  feed.onClose = () => stream.close();
}

/**
 * The gateway answered a stream with an error status, which EventSource does not show: ask
 * the same question as a poll to learn why. A refusal ({error}) stops what asked; anything
 * else (a proxy's 502, an expired token a function renews) is asked again, backing off, until
 * the poll is answered ({}: open the stream again). null when `current()` turns false.
 * @param {SubscribeOptions} options @param {Filter} filter @param {() => boolean} current
 * @returns {Promise<{error?: KumihoError}|null>}
 */
async function refusal(options, filter, current) {
  for (let attempt = 0; ; attempt += 1) {
    await pause(attempt);
    if (!current()) return null;
    const answer = await poll(options, filter, { cursor: "", from: "latest" }, 0);
    if (!current()) return null;
    if (answer.error) return { error: answer.error };
    if (answer.body) return {};
  }
}

/**
 * Where a stream or a poll starts: after a cursor, else from "latest" ("" too), "beginning"
 * or an ISO timestamp.
 * @typedef {{cursor: string, from: string}} Start
 */

/** @param {Start} start */
const fromLatest = (start) => !start.cursor && (!start.from || start.from === "latest");

// How far the gateway's clock is ahead of this one, in ms: learned from the Date of its answers
// (readable on the gateway's own origin; elsewhere this clock is taken as its).
let clockAhead = 0;

/** @param {Response} response */
function learnClock(response) {
  const date = Date.parse(response.headers.get("date") || "");
  if (!Number.isNaN(date)) clockAhead = date - Date.now();
}

// A "latest" stream's opening moment is taken this much early, as the gateway does for its own
// upstream and `tail` for its reconnects: clocks differ, and an event from just before the
// opening beats a gap. (Date has whole seconds: its truncation errs early too.)
const CLOCK_MARGIN_MS = 1000;

/** The moment a "latest" stream opens, as an ISO timestamp for `from` (see CLOCK_MARGIN_MS). */
const openedAt = () => new Date(Date.now() + clockAhead - CLOCK_MARGIN_MS).toISOString();

/**
 * @typedef {{event: (m: MessageEvent) => void, status: (s: KumihoStatus) => void,
 *            reset: (r: KumihoReset) => void, error: (e: KumihoError) => void,
 *            state: (s: ConnectionState) => void, open?: () => void}} StreamHandlers
 */

/**
 * One EventSource for a filter from a start, resumed as the gateway resumes its own upstream:
 * EventSource sends the last id it saw when it reconnects; before the first event, a stream that
 * began at "latest" would begin at the latest again and skip what came meanwhile, so it is
 * reopened from the moment it first opened (`since`) instead. With a token function, every
 * reconnection is a new EventSource, from the last id dispatched, with a token asked for then.
 */
class Stream {
  /**
   * @param {SubscribeOptions} options @param {Filter} filter @param {Start} start
   * @param {StreamHandlers} on
   */
  constructor(options, filter, start, on) {
    this.options = options;
    this.filter = filter;
    this.on = on;
    this.start = start;
    this.since = fromLatest(start) ? openedAt() : ""; // "": the start says where to resume
    this.dispatched = false; // an event came (its id, if any, is EventSource's to resend)
    this.lastId = ""; // the id of the last event dispatched
    this.opened = false; // an EventSource was made: the next one resumes (resumeAt)
    this.attempt = 0;
    this.closed = false;
    /** @type {EventSource|null} */
    this.source = null;
    this.open();
  }

  /** Where a new EventSource begins, as EventSource itself would resume. @returns {Start} */
  resumeAt() {
    if (this.lastId) return { cursor: this.lastId, from: "" };
    if (fromLatest(this.start) && !this.dispatched && this.since) return { cursor: "", from: this.since };
    return this.start;
  }

  /** Open an EventSource from the start, or where the last one stopped, with the token as it is now. */
  async open() {
    const start = this.opened ? this.resumeAt() : this.start;
    let token = null;
    try {
      token = await tokenOf(this.options);
    } catch {
      /* the token function failed: tried again after the backoff */
    }
    if (this.closed) return;
    if (token === null) {
      this.on.state("reconnecting");
      this.reopen();
      return;
    }
    this.opened = true;
    const source = new EventSource(streamUrl(this.options, this.filter, start, token), {
      withCredentials: Boolean(this.options.withCredentials),
    });
    this.source = source;
    // Not "live" on open: every stream starts with gateway.status, which says whether it is.
    source.onopen = () => {
      this.attempt = 0;
      this.on.open?.();
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        this.on.state("stopped"); // a non-200 answer: the caller asks a poll why
        return;
      }
      // EventSource would come back by itself with the same URL: a token function's token
      // may have expired (this is how a stream ended by token_expired resumes, with a fresh
      // one), and a "latest" stream would skip what came meanwhile.
      if (refreshes(this.options) || (fromLatest(start) && !this.dispatched && this.since)) this.reopen();
      this.on.state("reconnecting");
    };
    source.onmessage = (message) => {
      this.dispatched = true;
      this.lastId = message.lastEventId || this.lastId;
      this.on.event(message);
    };
    source.addEventListener("gateway.status", (m) => this.on.status(json(m)));
    source.addEventListener("gateway.reset", (m) => this.on.reset(json(m)));
    source.addEventListener("gateway.error", (m) => {
      const error = json(m);
      if (!error.retryable) source.close(); // else the stream ends and EventSource comes back after retry:
      this.on.error(error);
    });
  }

  /** Close the EventSource; open another after the backoff's next wait. */
  reopen() {
    const source = this.source;
    source?.close();
    pause(this.attempt++).then(() => this.closed || this.source !== source || this.open());
  }

  close() {
    this.closed = true;
    this.source?.close();
  }
}

// -- the shared connection ------------------------------------------------------

/** @type {Map<string, Hub>} */
const hubs = new Map();

/**
 * The gateway URL and the credential (a fingerprint, never the token), which name the shared
 * stream's lock and channel and the stored cursors: tabs share only what they would have asked
 * for alike, and a cursor is only ever resumed where it was read.
 * @param {SubscribeOptions} options
 */
function scopeOf(options) {
  const parts = [gatewayUrl(options).href];
  if (options.withCredentials) parts.push("cookies");
  // A function's tokens change: like a cookie, it stands for this browser's credential.
  if (refreshes(options)) parts.push("token:function");
  else if (options.accessToken) parts.push(`token:${fingerprint(/** @type {string} */ (options.accessToken))}`);
  return parts.join(" ");
}

/** The hub of this page for one gateway URL and credential. @param {SubscribeOptions} options */
function hubFor(options) {
  const key = scopeOf(options);
  let hub = hubs.get(key);
  if (!hub) {
    hub = new Hub(key, options);
    hubs.set(key, hub);
  }
  return hub;
}

// Four lanes of xor-multiply hashing, each with its own start and odd multiplier.
const LANES = [
  [0x811c9dc5, 0x01000193],
  [0x9e3779b9, 0x5bd1e995],
  [0x7f4a7c15, 0x85ebca6b],
  [0x2545f491, 0xc2b2ae35],
];

/**
 * A 128-bit digest, so that tokens are not written into lock and channel names and two
 * credentials never meet on one by chance. Not SubtleCrypto: it is missing on plain-http
 * pages other than localhost, and this must be synchronous.
 * @param {string} text
 */
function fingerprint(text) {
  if (!text) return "";
  return LANES.map(([start, multiplier]) => {
    let hash = start;
    for (let i = 0; i < text.length; i += 1) hash = Math.imul(hash ^ text.charCodeAt(i), multiplier);
    hash ^= hash >>> 15; // the last characters reach the low bits too
    return (Math.imul(hash, multiplier) >>> 0).toString(36);
  }).join(".");
}

// How long a catch-up poll may wait for the gateway's catch-up to show it is still reading (a
// stream of its own counts as caught up after 50 ms without a word from the upstream, and under
// load its first events can take longer than that to come); the cost is this much delay before
// a subscription with nothing to catch up goes live.
const CATCH_UP_WAIT_S = 1;
// Joins and leaves within this many milliseconds change the shared stream once.
const SETTLE_MS = 25;
// How long a new leader waits for the tabs to say what they read before it forgets the rest.
const ROLL_CALL_MS = 2000;

/**
 * The tabs of one origin, for one gateway and credential: this tab's subscriptions, every
 * tab's filters, and (in the leader) the one EventSource. Messages on the channel:
 * join/leave/bye (a tab's subscriptions), roll (a new leader asks them again), covered
 * (the stream now carries these subscriptions' events), and event/status/reset/error/state
 * (what the stream said). Joins and covers carry where the stream is (the last id relayed,
 * else the moment it first opened), so whichever tab leads next resumes it from there.
 */
class Hub {
  /** @param {string} key @param {SubscribeOptions} options */
  constructor(key, options) {
    this.key = key;
    this.options = options;
    this.tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    /** @type {Map<string, Shared>} this tab's subscriptions, by id */
    this.local = new Map();
    /** @type {Map<string, Filter>} every tab's, by "tab/id" */
    this.registry = new Map();
    this.position = ""; // the last id the shared stream relayed
    this.since = ""; // before any: the moment it first opened (from "latest"), as an ISO timestamp
    this.leading = false;
    /** @type {Stream|null} */
    this.source = null;
    this.streamQuery = "";
    this.streamOpen = false;
    /** @type {KumihoStatus|null} the stream's last gateway.status, for subscriptions that join later */
    this.lastStatus = null;
    this.closed = false;
    /** @type {Set<string>} the tabs that answered the last roll call (in the leader) */
    this.answered = new Set();
    /** @type {Set<string>} what the open stream was asked to carry */
    this.carried = new Set();
    this.settle = 0;
    this.channel = new BroadcastChannel(`kumiho-events ${key}`);
    this.channel.onmessage = (m) => this.receive(m.data);
    this.abort = new AbortController();
    /** @type {(() => void)|null} */
    this.releaseLock = null;
    navigator.locks
      .request(`kumiho-events ${key}`, { signal: this.abort.signal }, () => {
        if (this.closed) return undefined; // stopped as the lock came: pass it on
        this.lead();
        return new Promise((resolve) => (this.releaseLock = () => resolve(undefined)));
      })
      .catch(() => {}); // aborted: this page stopped before its turn came
    this.onPageHide = () => {
      // Closed here, the stream cannot report its end to the other tabs as an error.
      this.source?.close();
      for (const { feed } of this.local.values()) feed.flush();
      this.post({ type: "bye", tab: this.tab });
    };
    addEventListener("pagehide", this.onPageHide);
  }

  /** @param {Feed} feed @param {Start} start */
  add(feed, start) {
    const shared = new Shared(this, feed, start);
    this.local.set(shared.id, shared);
    feed.onClose = () => this.remove(shared);
    shared.begin();
  }

  /** @param {Shared} shared */
  join(shared) {
    const { position, since } = this;
    this.post({ type: "join", tab: this.tab, id: shared.id, filter: shared.feed.filter, position, since });
  }

  /** @param {Shared} shared */
  remove(shared) {
    this.local.delete(shared.id);
    this.post({ type: "leave", tab: this.tab, id: shared.id });
    if (this.local.size) return;
    // Nothing left here: hand the connection (and this tab's place in the queue) on.
    this.closed = true;
    clearTimeout(this.settle);
    this.source?.close();
    this.abort.abort();
    this.releaseLock?.();
    this.channel.close();
    removeEventListener("pagehide", this.onPageHide);
    hubs.delete(this.key);
  }

  /** To every tab, this one included. @param {Object} message */
  post(message) {
    this.channel.postMessage(message);
    this.receive(message);
  }

  /** @param {any} message */
  receive(message) {
    switch (message.type) {
      case "join":
        this.learn(message);
        this.registry.set(`${message.tab}/${message.id}`, message.filter);
        this.answered.add(message.tab);
        this.changed();
        break;
      case "leave":
        this.registry.delete(`${message.tab}/${message.id}`);
        this.changed();
        break;
      case "bye":
        for (const name of [...this.registry.keys()]) {
          if (name.startsWith(`${message.tab}/`)) this.registry.delete(name);
        }
        this.changed();
        break;
      case "roll": // a new leader: tell it again what this tab reads
        for (const shared of this.local.values()) {
          if (shared.joined) this.join(shared);
          if (shared.feed.state !== "connecting") shared.feed.setState("reconnecting");
        }
        break;
      case "covered":
        this.learn(message); // a tab that joined after the last event learns where the stream is
        for (const name of message.names) {
          const [tab, id] = name.split("/");
          if (tab === this.tab) this.local.get(id)?.covered(message.status);
        }
        break;
      case "event": {
        this.position = message.id || this.position;
        const event = JSON.parse(message.data);
        for (const shared of this.local.values()) shared.relayed(event, message.id);
        break;
      }
      case "status":
        this.lastStatus = message.status;
        for (const shared of this.local.values()) shared.status(message.status);
        break;
      case "reset":
        for (const shared of this.local.values()) shared.reset(message.reset);
        break;
      case "error":
        for (const shared of this.local.values()) if (shared.joined) shared.feed.fail(message.error);
        break;
      case "state":
        for (const shared of this.local.values()) if (shared.joined) shared.feed.setState(message.state);
        break;
    }
  }

  /**
   * Where another tab says the stream is, when this one does not know yet.
   * @param {{position?: string, since?: string}} message
   */
  learn(message) {
    this.position ||= message.position || "";
    this.since ||= message.since || "";
  }

  /** This tab got the lock: open the stream where the last leader stopped. */
  lead() {
    this.leading = true;
    for (const shared of this.local.values()) shared.feed.role = "leader";
    this.answered = new Set([this.tab]);
    this.post({ type: "roll" });
    this.open();
    // A tab that crashed never said bye: what no tab answers for is dropped after a while.
    setTimeout(() => {
      if (this.closed) return;
      for (const name of [...this.registry.keys()]) {
        if (!this.answered.has(name.split("/")[0])) this.registry.delete(name);
      }
      this.changed();
    }, ROLL_CALL_MS);
  }

  /** After joins and leaves settle, reopen the stream when what it must carry changed. */
  changed() {
    if (!this.leading || this.closed || this.settle) return;
    this.settle = setTimeout(() => {
      this.settle = 0;
      if (!this.source || this.wanted() !== this.streamQuery) this.open();
      else this.cover();
    }, SETTLE_MS);
  }

  /** The query of a stream that carries every tab's subscriptions. */
  wanted() {
    return filterQuery(union([...this.registry.values()])).toString();
  }

  /** Tell the subscriptions the open stream carries that it does (each acts on it once). */
  cover() {
    // Not yet open, or asking for less than the tabs now want: the next open does it.
    if (!this.streamOpen || this.wanted() !== this.streamQuery) return;
    const names = [...this.registry.keys()].filter((name) => !this.carried.has(name));
    for (const name of names) this.carried.add(name);
    const { position, since } = this;
    if (names.length) this.post({ type: "covered", names, status: this.lastStatus, position, since });
  }

  /**
   * (Re)open the one EventSource for the union of every tab's filters: from the last id relayed,
   * else from the moment the stream first opened (a take-over or a change of filters before the
   * first event must not skip what came meanwhile), else from the latest.
   */
  open() {
    this.source?.close();
    this.carried = new Set();
    const filter = union([...this.registry.values()]);
    this.streamQuery = filterQuery(filter).toString();
    this.streamOpen = false;
    if (!this.registry.size) {
      this.source = null; // nothing to read yet: the first join opens it
      return;
    }
    const start = this.position ? { cursor: this.position, from: "" } : { cursor: "", from: this.since };
    const source = new Stream(this.options, filter, start, {
      // Open means the gateway accepted the filters and opened its side (on the hosted
      // route, whose signals are comments, it is the only sign): what it reads from here on
      // carries every joined subscription's events.
      open: () => {
        this.streamOpen = true;
        this.cover();
      },
      event: (m) => this.post({ type: "event", id: m.lastEventId, data: m.data }),
      status: (status) => this.post({ type: "status", status }),
      reset: (reset) => this.post({ type: "reset", reset }),
      error: (error) => this.post({ type: "error", error }),
      state: (state) => {
        this.streamOpen = false;
        if (state === "stopped") this.refused(source);
        else this.post({ type: "state", state });
      },
    });
    this.source = source;
    this.since ||= source.since;
  }

  /**
   * The stream was answered with an error status: learn why (see refusal). A refusal stops
   * every subscription with it; anything else (a tab leaving mid-request too) is tried again.
   * @param {Stream} source
   */
  async refused(source) {
    this.post({ type: "state", state: "reconnecting" });
    const filter = union([...this.registry.values()]);
    const why = await refusal(this.options, filter, () => !this.closed && this.source === source);
    if (why?.error) this.post({ type: "error", error: why.error });
    else if (why) this.open();
  }
}

let nextId = 0;

/**
 * One subscription on the shared stream. It joins (the leader widens the stream to carry it)
 * and, once covered, catches up as every client of the gateway does (README, "GET
 * /events/poll"): it polls from its start while the answer says "more", then takes each relayed
 * event it wants; the feed's repeat filter drops what it already had. It keeps nothing the
 * stream relays meanwhile: when the stream relayed a wanted event past its last poll, it polls
 * once more instead.
 */
class Shared {
  /** @param {Hub} hub @param {Feed} feed @param {Start} start */
  constructor(hub, feed, start) {
    this.hub = hub;
    this.feed = feed;
    this.start = start;
    this.id = String((nextId += 1));
    this.joined = false;
    this.carried = false; // the stream carries its events (from then on they are relayed here)
    this.live = false;
    this.heard = ""; // while catching up: the cursor of the last wanted event relayed
    feed.role = hub.leading ? "leader" : "follower";
  }

  async begin() {
    // A refused filter would break the stream every tab shares: ask the gateway first.
    const check = await this.poll({ cursor: "", from: "latest" }, 0);
    if (check === null || this.feed.closed) return;
    this.joined = true;
    this.hub.join(this);
  }

  /**
   * The stream now carries this subscription: read the past, if asked for, then go live.
   * @param {KumihoStatus|null} status the stream's last
   */
  async covered(status) {
    if (this.carried || this.feed.closed) return;
    this.carried = true;
    this.feed.status ||= status;
    if (!fromLatest(this.start) && !(await this.catchUp())) return;
    this.live = true;
    if (this.feed.status) this.feed.report(this.feed.status);
  }

  /** Poll until caught up: false when the feed stopped meanwhile. */
  async catchUp() {
    let start = this.start;
    for (;;) {
      const answer = await this.poll(start, CATCH_UP_WAIT_S);
      if (answer === null) return false;
      if (answer.reset) this.feed.reset(answer.reset);
      for (const event of answer.events) this.feed.deliver(event);
      if (answer.cursor) {
        this.feed.advance(answer.cursor, true);
        start = { cursor: answer.cursor, from: "" };
      }
      // Caught up, unless the stream already relayed a wanted event this poll did not reach.
      if (!answer.more && (!this.heard || after(this.heard, this.feed.cursor) !== true)) return true;
    }
  }

  /** @param {KumihoEvent} event @param {string} id */
  relayed(event, id) {
    if (!this.carried) return; // not carried yet: the catch-up reads it
    const wanted = this.feed.wants(event);
    if (!this.live) {
      if (wanted && event.cursor) this.heard = event.cursor; // the catch-up polls up to it
    } else if (wanted) this.feed.deliver(event);
    else if (id) this.feed.advance(id);
  }

  /** @param {KumihoStatus} status */
  status(status) {
    if (!this.joined) return;
    if (this.live) this.feed.report(status);
    else this.feed.status = status; // reported once caught up: not "live" before that
  }

  /** @param {KumihoReset} reset */
  reset(reset) {
    if (this.joined) this.feed.reset(reset);
  }

  /**
   * One /events/poll answer for this subscription's filters, retried while the gateway asks to;
   * null when the feed stopped (refused: reported as an error).
   * @param {Start} start @param {number} wait seconds
   * @returns {Promise<{events: KumihoEvent[], cursor: string|null, more: boolean, reset: KumihoReset|null}|null>}
   */
  async poll(start, wait) {
    for (let attempt = 0; !this.feed.closed; attempt += 1) {
      const answer = await poll(this.feed.options, this.feed.filter, start, wait);
      if (answer.error) {
        this.feed.fail(answer.error);
        return null;
      }
      if (answer.body) return answer.body;
      if (this.feed.state !== "connecting") this.feed.setState("reconnecting");
      await pause(attempt);
    }
    return null;
  }
}

/**
 * One GET of /events/poll (next to the stream's URL): the answer, a refusal, or neither
 * (unreachable, or asked to retry: a 5xx or a 429). A refusal is the gateway's error envelope
 * when retrying cannot help, or "not_a_gateway": a status retrying cannot help (a 404) without
 * that envelope, or a success that is no poll answer (a page's HTML).
 * @param {SubscribeOptions} options @param {Filter} filter
 * @param {Start} start @param {number} wait seconds
 * @returns {Promise<{body?: any, error?: KumihoError}>}
 */
async function poll(options, filter, start, wait) {
  /** @type {URL} */
  let url;
  /** @type {Response} */
  let response;
  try {
    url = streamUrl(options, filter, start, await tokenOf(options));
    url.pathname = `${url.pathname.replace(/\/stream$/, "")}/poll`;
    url.searchParams.set("timeout", String(wait));
    url.searchParams.set("max_events", "1000");
    response = await fetch(url, { credentials: options.withCredentials ? "include" : "same-origin" });
  } catch {
    return {}; // unreachable (or a cross-origin answer the browser does not show), or the token function failed
  }
  learnClock(response);
  if (response.status >= 500 || response.status === 429) return {};
  const body = await response.json().catch(() => null);
  if (response.ok && Array.isArray(body?.events)) return { body };
  // A function gave a token that has expired: the next attempt asks it again.
  if (body?.error?.code === TOKEN_EXPIRED && refreshes(options)) return {};
  if (!response.ok && typeof body?.error?.code === "string") {
    return { error: { ...body.error, retryable: false } };
  }
  const answered = `${response.status} ${response.statusText}`.trim();
  return {
    error: {
      code: "not_a_gateway",
      message: `${url.origin}${url.pathname} answered ${answered}, not as a Kumiho gateway does: is the url option right?`,
      retryable: false,
      status: response.status,
    },
  };
}

// The gateway's one backoff, twinned (tests/test_tabs.py holds the two to the same numbers): the
// ceiling starts at initialMs and doubles with each failure in a row up to capMs, and each wait
// is drawn between half the ceiling and all of it, so a fleet of tabs never retries in lockstep.
export const BACKOFF = Object.freeze({ initialMs: 250, factor: 2, capMs: 30_000 });

/**
 * The wait before retry `attempt` (0: the first failure after a success), in ms.
 * @param {number} attempt @param {() => number} [random]
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF.capMs, BACKOFF.initialMs * BACKOFF.factor ** attempt);
  return ceiling * (0.5 + random() / 2);
}

/** Back off before retry `attempt` (see backoffDelay). @param {number} attempt */
const pause = (attempt) => new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt)));

// localStorage may be unavailable (privacy modes, sandboxed frames): degrade to memory.
function readStorage(key) {
  try {
    return localStorage.getItem(key) || "";
  } catch {
    return "";
  }
}

function writeStorage(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch {
    /* not persisted */
  }
}

function removeStorage(key) {
  try {
    localStorage.removeItem(key);
  } catch {
    /* nothing stored */
  }
}
