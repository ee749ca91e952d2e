// Reads a JSON list of attempts on stdin and prints, for each, the shortest and the longest
// wait kumiho-events.js's backoff draws before it (tests/test_tabs.py compares them with the
// gateway's).
import { readFileSync } from "node:fs";
import { BACKOFF, backoffDelay } from "../../static/kumiho-events.js";

const attempts = JSON.parse(readFileSync(0, "utf8"));
const bounds = attempts.map((n) => [backoffDelay(n, () => 0), backoffDelay(n, () => 1)]);
process.stdout.write(JSON.stringify({ numbers: BACKOFF, bounds }));
