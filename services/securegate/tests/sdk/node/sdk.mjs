// Drives a SecureGate gateway with the official OpenAI and Anthropic JavaScript SDKs,
// unchanged but for the base URL and the API key, on a model served by an Anthropic
// connection: OpenAI chat completions (translated) and Anthropic messages (native), one
// plain and one streamed call each. Exits non-zero on the first failed check.
import assert from "node:assert/strict";

import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const gateway = process.env.SG_GATEWAY;
const apiKey = process.env.SG_KEY;
const model = process.env.SG_MODEL;

const openai = new OpenAI({ baseURL: `${gateway}/v1`, apiKey, maxRetries: 0 });

const chat = await openai.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Hello from the OpenAI Node SDK" }],
});
assert.equal(chat.choices[0].finish_reason, "stop");
assert.match(chat.choices[0].message.content, /Hello from the OpenAI Node SDK/);
assert.ok(chat.usage.prompt_tokens > 0 && chat.usage.completion_tokens > 0, JSON.stringify(chat.usage));

const chatStream = await openai.chat.completions.create({
  model,
  stream: true,
  stream_options: { include_usage: true },
  messages: [{ role: "user", content: "Stream from the OpenAI Node SDK" }],
});
let chatText = "";
let chatPieces = 0;
let chatUsage = null;
for await (const chunk of chatStream) {
  if (chunk.usage) chatUsage = chunk.usage;
  const piece = chunk.choices[0]?.delta?.content;
  if (piece) {
    chatText += piece;
    chatPieces += 1;
  }
}
assert.match(chatText, /Stream from the OpenAI Node SDK/);
assert.ok(chatPieces > 1, `the answer came in ${chatPieces} piece(s)`);
assert.ok(chatUsage && chatUsage.total_tokens > 0, JSON.stringify(chatUsage));

const anthropic = new Anthropic({ baseURL: gateway, apiKey, maxRetries: 0 });

const message = await anthropic.messages.create({
  model,
  max_tokens: 100,
  messages: [{ role: "user", content: "Hello from the Anthropic Node SDK" }],
});
assert.equal(message.stop_reason, "end_turn");
assert.match(message.content[0].text, /Hello from the Anthropic Node SDK/);
assert.ok(message.usage.input_tokens > 0 && message.usage.output_tokens > 0);

const stream = anthropic.messages.stream({
  model,
  max_tokens: 100,
  messages: [{ role: "user", content: "Stream from the Anthropic Node SDK" }],
});
let pieces = 0;
stream.on("text", () => {
  pieces += 1;
});
const final = await stream.finalMessage();
assert.match(final.content[0].text, /Stream from the Anthropic Node SDK/);
assert.ok(pieces > 1, `the answer came in ${pieces} piece(s)`);
assert.ok(final.usage.output_tokens > 1, JSON.stringify(final.usage));

console.log("node sdk checks passed");
