// Reads the hosted events API as its consumers do (Kumiho's n8n trigger node):
// fetch(), every `data:` line is an event, the cursor comes from the JSON, and
// after the stream ends it reconnects with ?cursor= after a fixed delay.
// Prints one line per connection ({"connect": n}) and one per event (its JSON),
// and exits after COUNT events.
// Usage: node hosted-fetch.mjs URL COUNT [HEADER=VALUE ...]
const [url, count, ...pairs] = process.argv.slice(2);
const headers = Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
headers.Accept = "text/event-stream";
let cursor = "";
let seen = 0;
const timer = setTimeout(() => {
  console.error(`timed out after ${seen} of ${count} events`);
  process.exit(1);
}, 60_000);

for (let connection = 1; seen < Number(count) && connection <= 50; connection++) {
  const target = new URL(url);
  if (cursor) target.searchParams.set("cursor", cursor);
  const response = await fetch(target, { headers });
  console.log(JSON.stringify({ connect: connection, status: response.status }));
  if (response.status !== 200) {
    console.error(await response.text());
    process.exit(2);
  }
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of response.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;
      const event = JSON.parse(line.slice(5).trim()); // throws if a data line is not an event
      if (event.cursor) cursor = event.cursor;
      console.log(JSON.stringify(event));
      seen++;
    }
    if (seen >= Number(count)) break;
  }
  await new Promise((resolve) => setTimeout(resolve, 200)); // the node's fixed reconnect delay
}
clearTimeout(timer);
process.exit(seen >= Number(count) ? 0 : 1);
