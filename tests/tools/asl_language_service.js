// AWS's own ASL validation (the language service behind AWS Toolkit's Step Functions editor),
// run headless: `node asl_language_service.js FILE...` prints one JSON object per file,
// {"file": ..., "diagnostics": [{"line", "column", "severity", "message"}]}, and exits 1 if any
// file has an error. Installed by `make tools` (npm, .tools/node); run by tests/test_static.py.
"use strict";
const fs = require("fs");
const { getLanguageService, TextDocument } = require("amazon-states-language-service");

async function diagnose(path) {
  const service = getLanguageService({});
  const document = TextDocument.create(`file://${path}`, "asl", 0, fs.readFileSync(path, "utf8"));
  const found = await service.doValidation(document, service.parseJSONDocument(document));
  return found.map((d) => ({
    line: d.range.start.line + 1, column: d.range.start.character + 1, severity: d.severity, message: d.message,
  }));
}

(async () => {
  let failed = false;
  for (const path of process.argv.slice(2)) {
    const diagnostics = await diagnose(path);
    failed = failed || diagnostics.some((d) => d.severity === 1);
    console.log(JSON.stringify({ file: path, diagnostics }));
  }
  process.exit(failed ? 1 : 0);
})().catch((err) => { console.error(String(err)); process.exit(2); });
