"""The official OpenAI Python SDK against a key limited to 2 requests per minute: the
answers carry the rate-limit headers it knows, and the third request raises
RateLimitError with the code and Retry-After an OpenAI client expects."""
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["SG_BASE_URL"], api_key=os.environ["SG_KEY"], max_retries=0)
messages = [{"role": "user", "content": "hello"}]


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


for i in range(2):
    raw = client.chat.completions.with_raw_response.create(model="mock-gpt-4o-mini", messages=messages)
    check(raw.headers.get("x-ratelimit-limit-requests") == "2", f"limit header: {dict(raw.headers)}")
    check(raw.headers.get("x-ratelimit-remaining-requests") is not None, "remaining header")
    check(raw.headers.get("x-ratelimit-reset-requests", "").endswith("s"), "reset header")
    check(raw.headers.get("x-ratelimit-limit-tokens") == "100000", "tokens limit header")
    check(raw.parse().choices[0].message.content, "an answer")

try:
    client.chat.completions.create(model="mock-gpt-4o-mini", messages=messages)
    check(False, "the third request in a minute must be refused")
except openai.RateLimitError as e:
    check(e.status_code == 429, f"status {e.status_code}")
    check(e.code == "rate_limit_exceeded", f"code {e.code}")
    check(e.type == "rate_limit_error", f"type {e.type}")
    after = int(e.response.headers.get("retry-after", "0"))
    check(1 <= after <= 60, f"retry-after {after}")
    check(e.response.headers.get("x-ratelimit-remaining-requests") == "0", f"remaining {dict(e.response.headers)}")

print("rate limit checks passed")
