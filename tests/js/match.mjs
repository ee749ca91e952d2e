// Reads [{filter, event}, ...] as JSON on stdin and prints, as a JSON list, whether
// kumiho-events.js's matcher lets each event through its filter (tests/test_tabs.py
// compares the answers with the gateway's).
import { readFileSync } from "node:fs";
import { matcher } from "../../static/kumiho-events.js";

const cases = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map(({ filter, event }) => matcher(filter)(event))));
