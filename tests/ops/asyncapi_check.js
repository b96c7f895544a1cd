// Parses an AsyncAPI document (file argument) with @asyncapi/parser and
// fails on any error-severity diagnostic. Prints a one-line summary, then
// each diagnostic. Run by tests/ops/run.sh with NODE_PATH set to a scratch
// install of the parser.
"use strict";
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");

const SEVERITY = ["error", "warning", "information", "hint"];

(async () => {
  const text = fs.readFileSync(process.argv[2], "utf8");
  const { document, diagnostics } = await new Parser().parse(text);
  const counts = [0, 0, 0, 0];
  for (const d of diagnostics) counts[d.severity] += 1;
  const ok = document !== undefined && counts[0] === 0;
  let summary = `AsyncAPI parser: ${ok ? "valid" : "INVALID"}; ` +
    SEVERITY.map((s, i) => `${counts[i]} ${s}`).join(", ");
  if (document) {
    const channels = document.channels().all().map((c) => c.address());
    const ops = document.operations().all();
    const msgs = document.allMessages().all();
    summary += `; channels ${channels.join(", ")}; ${ops.length} operations, ${msgs.length} messages`;
  }
  console.log(summary);
  for (const d of diagnostics) {
    console.log(`  ${SEVERITY[d.severity]} ${d.code} at ${(d.path || []).join(".")}: ${d.message}`);
  }
  process.exit(ok ? 0 : 1);
})().catch((e) => {
  console.log(`AsyncAPI parser failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
