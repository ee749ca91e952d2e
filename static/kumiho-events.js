// kumiho-events.js: live Kumiho events in a browser, resumable across reloads.
//
//   import { subscribe } from "/kumiho-events.js";
//   const feed = subscribe({ routingKey: "revision.*", onEvent: (e) => console.log(e.kref) });
//   feed.close();
//
// A thin layer over EventSource: it parses each event, reports gaps
// (gateway.reset), the upstream's state (gateway.status) and terminal errors
// (gateway.error), tracks the connection state, and keeps the last cursor in
// localStorage so a reloaded page continues where it left off (sent as
// ?cursor=, since a first EventSource request cannot carry a Last-Event-ID
// header). No dependencies.

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
 * any other stops the feed.
 * @typedef {Object} KumihoError
 * @property {string} code
 * @property {string} message
 * @property {boolean} retryable
 */

/**
 * "live" only while the gateway is connected and says its upstream is live;
 * "upstream-down": connected, but the upstream is unavailable or failing (see status()).
 * @typedef {"connecting"|"live"|"upstream-down"|"reconnecting"|"stopped"} ConnectionState
 */

/**
 * @typedef {Object} SubscribeOptions
 * @property {string} [url="/events"]           the gateway's /events URL (absolute for another origin)
 * @property {string|string[]} [routingKey]     routing-key filter, e.g. "revision.*"; a list means any of them
 * @property {string|string[]} [kref]           kref filter, e.g. "kref://film/**"; a list likewise
 * @property {Object<string, string|string[]>} [details]  detail filters, e.g. {tag: "approved"} (globs, lists)
 * @property {string|string[]} [author]         only events by these authors (user ids; globs)
 * @property {string|string[]} [username]       only events by these usernames (globs)
 * @property {string} [consumerGroup]           a Kumiho consumer group (Enterprise): share the events with its other members
 * @property {string} [from]                    "latest" (default), "beginning" or an ISO timestamp; used when no cursor is stored
 * @property {string} [cursor]                  resume after this cursor (wins over the stored one)
 * @property {string} [accessToken]             for --auth passthrough/service when no cookie or header can carry it
 * @property {boolean} [withCredentials=false]  send cookies cross-origin (kumiho_token)
 * @property {string|null} [storageKey="kumiho-events:cursor"]  localStorage key of the last cursor; null: do not persist
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
 * @property {() => void} forget         drop the stored cursor (start afresh next time)
 */

/**
 * Subscribe to Kumiho events through the gateway.
 * @param {SubscribeOptions} [options]
 * @returns {Feed}
 */
export function subscribe(options = {}) {
  const storageKey = options.storageKey === undefined ? "kumiho-events:cursor" : options.storageKey;
  const stored = storageKey ? readStorage(storageKey) : "";
  let cursor = options.cursor || stored || "";
  /** @type {ConnectionState} */
  let state = "connecting";
  let reconnects = 0;
  /** @type {KumihoStatus|null} */
  let status = null;

  const url = new URL(options.url || "/events", location.href);
  const list = (value) => (Array.isArray(value) ? value.join(",") : value);
  if (options.routingKey?.length) url.searchParams.set("routing_key", list(options.routingKey));
  if (options.kref?.length) url.searchParams.set("kref", list(options.kref));
  for (const [key, patterns] of Object.entries(options.details || {})) {
    url.searchParams.set(`details.${key}`, list(patterns));
  }
  if (options.author?.length) url.searchParams.set("author", list(options.author));
  if (options.username?.length) url.searchParams.set("username", list(options.username));
  if (options.consumerGroup) url.searchParams.set("consumer_group", options.consumerGroup);
  if (cursor) url.searchParams.set("cursor", cursor);
  else if (options.from) url.searchParams.set("from", options.from);
  if (options.accessToken) url.searchParams.set("access_token", options.accessToken);

  const source = new EventSource(url, { withCredentials: Boolean(options.withCredentials) });

  /** @param {ConnectionState} next */
  function setState(next) {
    if (next === state) return;
    state = next;
    options.onStateChange?.(state, reconnects);
  }

  // Not "live" on open: every stream starts with gateway.status, which says whether it is.
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setState("stopped"); // a non-200 answer: retrying cannot help
    } else if (state !== "reconnecting") {
      reconnects += 1;
      setState("reconnecting");
    }
  };
  source.onmessage = (message) => {
    if (message.lastEventId) {
      cursor = message.lastEventId;
      if (storageKey) writeStorage(storageKey, cursor);
    }
    options.onEvent?.(/** @type {KumihoEvent} */ (JSON.parse(message.data)));
  };
  source.addEventListener("gateway.reset", (message) => {
    options.onReset?.(/** @type {KumihoReset} */ (JSON.parse(/** @type {MessageEvent} */ (message).data)));
  });
  source.addEventListener("gateway.status", (message) => {
    status = /** @type {KumihoStatus} */ (JSON.parse(/** @type {MessageEvent} */ (message).data));
    options.onStatus?.(status);
    setState(status.upstream === "live" ? "live" : "upstream-down");
  });
  source.addEventListener("gateway.error", (message) => {
    const error = /** @type {KumihoError} */ (JSON.parse(/** @type {MessageEvent} */ (message).data));
    options.onError?.(error);
    if (error.retryable) return; // the stream ends and EventSource comes back after retry:
    source.close();
    setState("stopped");
  });

  return {
    close() {
      source.close();
      setState("stopped");
    },
    state: () => state,
    cursor: () => cursor,
    reconnects: () => reconnects,
    status: () => status,
    forget() {
      if (storageKey) removeStorage(storageKey);
    },
  };
}

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
