#!/usr/bin/env node
// A wqd producer in Node (amqplib): node new_task.js QUEUE MESSAGE...
// Broker URL in $AMQP_URL (default amqp://localhost). Prints each message's
// id once the broker confirmed it; exits 1 on any message it did not confirm.
"use strict";
const amqp = require("amqplib");
const crypto = require("crypto");

// Everything after connecting ends within this: a confirm never comes from a broker that lost the message.
const TIMEOUT_MS = 30000;

function deadline(ms) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`no confirm within ${ms / 1000} s`)), ms).unref());
}

async function main([queue, ...messages]) {
  const connection = await amqp.connect(process.env.AMQP_URL || "amqp://localhost");
  try {
    const channel = await connection.createConfirmChannel();
    // Passive: the queue's arguments are the pool's; a missing queue is an error (404).
    await channel.checkQueue(queue);
    const returned = [];
    channel.on("return", (message) => returned.push(message.properties.messageId));
    const ids = messages.map((text) => {
      const messageId = crypto.randomUUID();
      channel.publish("", queue, Buffer.from(text), {
        persistent: true, mandatory: true, messageId, contentType: "text/plain",
      });
      return messageId;
    });
    // Rejects if the broker nacked any; a return comes before its message's ack.
    await Promise.race([channel.waitForConfirms(), deadline(TIMEOUT_MS)]);
    if (returned.length) throw new Error(`no queue took ${returned.join(", ")}`);
    messages.forEach((text, i) => console.log(` [x] Sent ${JSON.stringify(text)} as ${ids[i]}`));
  } finally {
    await connection.close();
  }
}

main(process.argv.slice(2)).catch((error) => {
  console.error(`new_task.js: ${error.message}`);
  process.exit(1);
});
