"""Drives a SecureGate gateway with the official OpenAI Python SDK, unchanged but for
base_url and api_key. Exits non-zero (with a message) on the first failed check."""
import os
import sys

import openai
from openai import OpenAI

base_url = os.environ["SG_BASE_URL"]
key = os.environ["SG_KEY"]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

reply = client.chat.completions.create(
    model="mock-gpt-4o-mini", messages=[{"role": "user", "content": "Hello from the SDK"}]
)
assert "Hello from the SDK" in reply.choices[0].message.content, reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0, reply.usage

pieces, usage_chunks = [], 0
for chunk in client.chat.completions.create(
    model="mock-gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "Stream please"}]
):
    if not chunk.choices:
        usage_chunks += 1
        continue
    pieces.append(chunk.choices[0].delta.content or "")
text = "".join(pieces)
assert "Stream please" in text, text
assert usage_chunks == 0, "the client did not ask for a usage chunk but got one"

# Asking for usage explicitly yields it, as with the provider itself.
stream = client.chat.completions.create(
    model="mock-gpt-4o-mini", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "count me"}],
)
usage = [c.usage for c in stream if c.usage is not None]
assert len(usage) == 1 and usage[0].total_tokens > 0, usage

emb = client.embeddings.create(model="mock-embedding", input=["a", "b"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8, emb

try:
    OpenAI(base_url=base_url, api_key=key[:-1] + ("A" if key[-1] != "A" else "B"), max_retries=0).models.list()
    sys.exit("a mistyped key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e

try:
    client.chat.completions.create(model="mock-gpt-4o-mini", messages="not a list")
except openai.APIStatusError as e:
    # The mock provider refuses it; the gateway passes the provider's error through.
    assert e.status_code == 400, e
else:
    sys.exit("a malformed request was accepted")

print("sdk checks passed")
