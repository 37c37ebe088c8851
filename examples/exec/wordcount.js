#!/usr/bin/env node
// A wqd exec handler in Node.js, one process per message: the body on stdin,
// the message in WQD_* variables; exit 0 = done, 65 = reject (dead-letter
// now), anything else = failed (retried). stdout and stderr go to wqd's log.
let body = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { body += chunk; });
process.stdin.on("end", () => {
  const words = body.split(/\s+/).filter(Boolean).length;
  if (words === 0) {
    console.error("empty message: nothing to count");
    process.exit(65);
  }
  const headers = JSON.parse(process.env.WQD_HEADERS);
  console.log(`message ${process.env.WQD_MESSAGE_ID} (attempt ${process.env.WQD_ATTEMPT}): ${words} words`,
              headers.tenant ? `for ${headers.tenant}` : "");
});
