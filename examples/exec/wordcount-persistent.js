#!/usr/bin/env node
// A persistent wqd exec handler in Node.js (handler: {exec: [...], persistent: true}):
// one process per worker reads one JSON request per line on stdin and writes
// one JSON answer per line on stdout, echoing the request's "id": {"id": ...,
// "status": "ok"}, "status": "reject", "reason": ... (dead-letter now) or
// "status": "error", "reason": ... (retried). Log on stderr: it goes to wqd's
// log. If it dies, or breaks the protocol, wqd starts it again.
const readline = require("readline");

const answer = (task, fields) => process.stdout.write(JSON.stringify({ id: task.id, ...fields }) + "\n");

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const task = JSON.parse(line);
  const body = task.encoding === "base64" ? Buffer.from(task.body, "base64").toString() : task.body;
  try {
    const words = body.split(/\s+/).filter(Boolean).length;
    if (words === 0) return answer(task, { status: "reject", reason: "empty message: nothing to count" });
    console.error(`message ${task.message_id} (attempt ${task.attempt}): ${words} words`);
    answer(task, { status: "ok" });
  } catch (error) {
    answer(task, { status: "error", reason: String(error) });
  }
});
