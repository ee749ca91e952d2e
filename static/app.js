// Placeholder dashboard: opens an EventSource on /events and lists events, newest first.
const MAX_ROWS = 500;
const rows = document.getElementById("events");
const state = document.getElementById("state");
const cursorEl = document.getElementById("cursor");

function addRow(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  rows.prepend(tr);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
}

const source = new EventSource("/events" + location.search);
source.onopen = () => { state.textContent = "live"; };
source.onerror = () => {
  state.textContent = source.readyState === EventSource.CLOSED ? "stopped" : "reconnecting";
};
source.onmessage = (message) => {
  const ev = JSON.parse(message.data);
  if (message.lastEventId) cursorEl.textContent = message.lastEventId;
  addRow([ev.timestamp, ev.routing_key, ev.kref, ev.username || ev.author, JSON.stringify(ev.details)]);
};
source.addEventListener("gateway.reset", (message) => {
  const reset = JSON.parse(message.data);
  addRow(["", "gateway.reset", `gap: ${reset.reason}`, "", `resumed from ${reset.resumed_from}`], "reset");
});
source.addEventListener("gateway.error", (message) => {
  const { message: text } = JSON.parse(message.data);
  state.textContent = `stopped: ${text}`;
  source.close();
});
