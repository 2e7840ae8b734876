#!/usr/bin/env node
// Validate one glTF 2.0 asset (.glb or .gltf) with the Khronos glTF validator.
//
// Usage: node tools/validate_gltf.mjs FILE.glb
// Prints the validator's JSON report on stdout; exits 1 if the report has errors, 2 on a usage or read problem.
// Install the validator first: npm install --prefix tools
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

const file = process.argv[2];
if (!file) {
  console.error("usage: node tools/validate_gltf.mjs FILE.glb");
  process.exit(2);
}

let validator;
try {
  validator = require("gltf-validator");
} catch (err) {
  console.error("gltf-validator is not installed; run: npm install --prefix tools");
  process.exit(2);
}

let bytes;
try {
  bytes = new Uint8Array(readFileSync(file));
} catch (err) {
  console.error(`cannot read ${file}: ${err.message}`);
  process.exit(2);
}

try {
  const report = await validator.validateBytes(bytes, {
    uri: basename(file),
    maxIssues: 0, // report every issue, not just the first 100
    writeTimestamp: false,
    // Our exports are self-contained; any external reference is a defect, so refuse to load it.
    externalResourceFunction: (uri) => Promise.reject(new Error(`external resource not allowed: ${uri}`)),
  });
  console.log(JSON.stringify(report, null, 2));
  process.exit(report.issues.numErrors > 0 ? 1 : 0);
} catch (err) {
  // The validator rejects when it cannot even recognise the format.
  console.error(`validation failed: ${err}`);
  process.exit(2);
}
