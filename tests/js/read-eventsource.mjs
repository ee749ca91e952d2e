// Reads N events with the npm `eventsource` package and prints [[lastEventId, data], ...] as JSON.
import { EventSource } from "eventsource";

const [url, count] = [process.argv[2], Number(process.argv[3])];
const out = [];
const es = new EventSource(url);
const timer = setTimeout(() => {
  console.error(`timed out after ${out.length} of ${count} events`);
  process.exit(1);
}, 30_000);
es.onmessage = (message) => {
  out.push([message.lastEventId, message.data]);
  if (out.length === count) {
    es.close();
    clearTimeout(timer);
    console.log(JSON.stringify(out));
  }
};
es.onerror = (error) => {
  if (es.readyState === EventSource.CLOSED) {
    console.error("closed:", error?.message);
    process.exit(1);
  }
};
