"""Drives a SecureGate gateway with the official OpenAI Python SDK's chat completions, on
a model served by an Anthropic connection (the gateway translates to the Messages API
and back). Exits non-zero (with a message) on the first failed check."""
import json
import os

from openai import OpenAI

base_url = os.environ["SG_BASE_URL"]
key = os.environ["SG_KEY"]
model = os.environ["SG_MODEL"]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

# Plain.
reply = client.chat.completions.create(
    model=model,
    messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello from the OpenAI SDK"},
    ],
)
assert reply.object == "chat.completion", reply
assert reply.model == model, reply
choice = reply.choices[0]
assert choice.finish_reason == "stop", choice
assert choice.message.role == "assistant", choice
assert "Hello from the OpenAI SDK" in choice.message.content, choice
u = reply.usage
assert u.prompt_tokens > 0 and u.completion_tokens > 0, u
assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u

# Streamed, without asking for usage: no usage chunk.
pieces, usage_chunks, finish = [], 0, None
for chunk in client.chat.completions.create(
    model=model, stream=True, messages=[{"role": "user", "content": "Stream please"}]
):
    assert chunk.object == "chat.completion.chunk", chunk
    if not chunk.choices:
        usage_chunks += 1
        continue
    pieces.append(chunk.choices[0].delta.content or "")
    finish = chunk.choices[0].finish_reason or finish
text = "".join(pieces)
assert "Stream please" in text, text
assert len([p for p in pieces if p]) > 1, pieces
assert finish == "stop", finish
assert usage_chunks == 0, "the client did not ask for a usage chunk but got one"

# Streamed, asking for usage: exactly one usage chunk, last.
chunks = list(client.chat.completions.create(
    model=model, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "count me"}],
))
usage = [c.usage for c in chunks if c.usage is not None]
assert len(usage) == 1, usage
assert chunks[-1].usage is not None and not chunks[-1].choices, chunks[-1]
assert usage[0].prompt_tokens > 0 and usage[0].completion_tokens > 0, usage
assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens, usage

# A streamed tool call: its arguments arrive in pieces.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}]
ask = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
calls, fragments, finish = {}, 0, None
for chunk in client.chat.completions.create(model=model, stream=True, tools=tools, messages=ask):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    finish = chunk.choices[0].finish_reason or finish
    for tc in delta.tool_calls or []:
        call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
        if tc.id:
            call["id"] = tc.id
        if tc.function and tc.function.name:
            call["name"] = tc.function.name
        if tc.function and tc.function.arguments:
            call["arguments"] += tc.function.arguments
            fragments += 1
assert finish == "tool_calls", finish
assert list(calls) == [0], calls
assert calls[0]["name"] == "get_weather" and calls[0]["id"], calls
assert fragments > 1, f"the arguments came in {fragments} piece(s)"
assert json.loads(calls[0]["arguments"]) == {"city": "sg-city", "unit": "celsius"}, calls

# The same call, plain, then its result sent back.
call = client.chat.completions.create(model=model, tools=tools, messages=ask)
assert call.choices[0].finish_reason == "tool_calls", call
tc = call.choices[0].message.tool_calls[0]
assert tc.type == "function" and tc.function.name == "get_weather", tc
assert json.loads(tc.function.arguments) == {"city": "sg-city", "unit": "celsius"}, tc
after = client.chat.completions.create(
    model=model, tools=tools,
    messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
        {"role": "tool", "tool_call_id": tc.id, "content": "sunny, 21 C"},
    ],
)
assert after.choices[0].finish_reason == "stop", after
assert "sunny, 21 C" in after.choices[0].message.content, after

# A length cut.
short = client.chat.completions.create(
    model=model, max_tokens=3, temperature=0.5,
    messages=[{"role": "user", "content": "a long question with many words in it"}],
)
assert short.choices[0].finish_reason == "length", short
assert short.usage.completion_tokens == 3, short.usage

print("openai sdk to anthropic checks passed")
