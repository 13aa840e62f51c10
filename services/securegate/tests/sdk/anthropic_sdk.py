"""Drives a SecureGate gateway with the official Anthropic Python SDK, unchanged but for
base_url and api_key, on a project whose connection is to Anthropic (the Messages API
passes natively). Prints `usage <json>`: the token counts each message answer reported,
for the caller to compare with what the gateway recorded. Exits non-zero (with a
message) on the first failed check."""
import json
import os
import sys

import anthropic

base_url = os.environ["SG_BASE_URL"]
key = os.environ["SG_KEY"]
model = os.environ["SG_MODEL"]
client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
answers = []


def prompt_of(usage):
    return (usage.input_tokens or 0) + (usage.cache_read_input_tokens or 0) + (
        usage.cache_creation_input_tokens or 0
    )


def note(streamed, usage):
    answers.append(
        {"streamed": streamed, "prompt": prompt_of(usage), "completion": usage.output_tokens}
    )


# A plain message.
hello = [{"role": "user", "content": "Hello from the Anthropic SDK"}]
reply = client.messages.create(model=model, max_tokens=100, messages=hello)
assert reply.type == "message" and reply.role == "assistant", reply
assert reply.model == model, reply
assert reply.stop_reason == "end_turn", reply
assert "Hello from the Anthropic SDK" in reply.content[0].text, reply
assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0, reply.usage
note(False, reply.usage)

# The streaming helper, with a cached system prompt.
with client.messages.stream(
    model=model,
    max_tokens=100,
    system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    messages=[{"role": "user", "content": "Stream this answer please"}],
) as stream:
    pieces = list(stream.text_stream)
    final = stream.get_final_message()
assert len(pieces) > 1, f"the answer came in {len(pieces)} piece(s)"
assert "".join(pieces) == final.content[0].text, (pieces, final)
assert "Stream this answer please" in final.content[0].text, final
assert final.stop_reason == "end_turn", final
assert final.usage.cache_read_input_tokens > 0, final.usage
assert final.usage.output_tokens > 1, final.usage
note(True, final.usage)

# The raw event stream, event by event.
kinds, usage = [], {}
for event in client.messages.create(
    model=model, max_tokens=100, stream=True,
    messages=[{"role": "user", "content": "Raw events please"}],
):
    kinds.append(event.type)
    if event.type == "message_start":
        usage = {"input": event.message.usage.input_tokens,
                 "cache": (event.message.usage.cache_read_input_tokens or 0)
                 + (event.message.usage.cache_creation_input_tokens or 0)}
    elif event.type == "message_delta":
        usage["output"] = event.usage.output_tokens
assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
for kind in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
    assert kind in kinds, kinds
answers.append({"streamed": True, "prompt": usage["input"] + usage["cache"], "completion": usage["output"]})

# Counting tokens: the same messages count as the plain message's input.
count = client.messages.count_tokens(model=model, messages=hello)
assert count.input_tokens == reply.usage.input_tokens, (count, reply.usage)

# A tool call and its result.
tools = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
ask = [{"role": "user", "content": "Please use get_weather for Paris"}]
call = client.messages.create(model=model, max_tokens=200, tools=tools, messages=ask)
assert call.stop_reason == "tool_use", call
tool_use = [b for b in call.content if b.type == "tool_use"]
assert len(tool_use) == 1 and tool_use[0].name == "get_weather", call
assert tool_use[0].input == {"city": "sg-city"}, tool_use[0].input
note(False, call.usage)
after = client.messages.create(
    model=model, max_tokens=200, tools=tools,
    messages=ask + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use[0].id, "content": "sunny, 21 C"}]},
    ],
)
assert after.stop_reason == "end_turn", after
assert "sunny, 21 C" in after.content[0].text, after
note(False, after.usage)

# The provider's model list, through the gateway.
ids = [m.id for m in client.models.list()]
assert model in ids, ids

# A mistyped key is refused by the gateway.
try:
    anthropic.Anthropic(
        base_url=base_url, api_key=key[:-1] + ("A" if key[-1] != "A" else "B"), max_retries=0
    ).messages.create(model=model, max_tokens=10, messages=hello)
    sys.exit("a mistyped key was accepted")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401, e

print("usage " + json.dumps(answers))
print("anthropic sdk checks passed")
