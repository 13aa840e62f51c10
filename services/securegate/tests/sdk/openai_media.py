"""Drives a SecureGate gateway's media endpoints with the official OpenAI Python SDK,
unchanged but for base_url and api_key: audio transcription and translation, speech,
image generation and edit, files, and a chat request with an image and a PDF.

Every request is watched through the SDK's own HTTP client (event hooks): the exact
body sent and received, their SHA-256 and length, the gateway's request id, and an
`x-client-request-id` that the gateway passes on to the provider. The exchanges are
written as JSON to $SG_OUT/exchanges.json, with the speech and generated image bytes
beside them, for the test to compare with the provider stand-in and the request
history. Exits non-zero (with a message) on the first failed check."""
import base64
import hashlib
import json
import os
import sys
import uuid

import openai
from openai import OpenAI

base_url = os.environ["SG_BASE_URL"]
key = os.environ["SG_KEY"]
locked_key = os.environ["SG_LOCKED_KEY"]
out = os.environ["SG_OUT"]
SPEECH_INPUT = os.environ["SG_SPEECH_INPUT"]
IMAGE_PROMPT = os.environ["SG_IMAGE_PROMPT"]

exchanges = []
current = {}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_request(request):
    # A fresh id per request, which the gateway forwards to the provider.
    request.headers["x-client-request-id"] = str(uuid.uuid4())
    body = request.read()
    current[id(request)] = {
        "label": label,
        "method": request.method,
        "path": request.url.path,
        "client_request_id": request.headers["x-client-request-id"],
        "request_bytes": len(body),
        "request_sha256": sha(body),
    }


def on_response(response):
    body = response.read()
    exchange = current.pop(id(response.request))
    exchange.update(
        status=response.status_code,
        request_id=response.headers.get("x-securegate-request-id"),
        response_bytes=len(body),
        response_sha256=sha(body),
        content_type=response.headers.get("content-type"),
    )
    exchanges.append(exchange)


def client_for(api_key):
    http = openai.DefaultHttpxClient(event_hooks={"request": [on_request], "response": [on_response]})
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)


def check(cond, message):
    if not cond:
        sys.exit(f"check failed: {message}")


def last():
    return exchanges[-1]


client = client_for(key)
label = ""

# Audio transcription of a file of several MB: the provider sees exactly its bytes, and
# exactly the body the SDK sent.
label = "transcription"
audio = os.urandom(6 * 1024 * 1024)
raw = client.audio.transcriptions.with_raw_response.create(
    model="whisper-1", file=("meeting.mp3", audio, "audio/mpeg")
)
transcription = raw.parse()
extra = transcription.model_extra or {}
check(transcription.text.startswith("Stand-in transcription of"), transcription)
check(raw.headers["x-file-sha256"] == sha(audio), "the file reached the provider altered")
check(extra["file"] == {"filename": "meeting.mp3", "bytes": len(audio), "sha256": sha(audio)}, extra)
check(extra["model"] == "whisper-1" and extra["model_fields"] == 1, extra)
check(int(raw.headers["x-body-bytes"]) == last()["request_bytes"], (raw.headers, last()))
check(raw.headers["x-body-sha256"] == last()["request_sha256"], "the body reached the provider altered")

label = "translation"
speech_sample = os.urandom(700 * 1024)
translation = client.audio.translations.create(model="whisper-1", file=("talk.wav", speech_sample))
extra = translation.model_extra or {}
check(translation.text.startswith("Stand-in translation of"), translation)
check(extra["file"]["sha256"] == sha(speech_sample), extra)
check(extra["body"]["sha256"] == last()["request_sha256"], (extra, last()))

# Speech: a binary answer streamed back through the gateway.
label = "speech"
speech = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=SPEECH_INPUT)
check(last()["content_type"] == "audio/mpeg", last())
with open(os.path.join(out, "speech.bin"), "wb") as f:
    f.write(speech.content)
check(len(speech.content) == last()["response_bytes"], "the SDK read another body than the hook")

# Image generation and edit.
label = "image_generation"
generated = client.images.generate(model="gpt-image-1", prompt=IMAGE_PROMPT)
with open(os.path.join(out, "generated.bin"), "wb") as f:
    f.write(base64.b64decode(generated.data[0].b64_json))

label = "image_edit"
picture = b"\x89PNG\r\n\x1a\n" + os.urandom(300 * 1024)
raw = client.images.with_raw_response.edit(
    model="gpt-image-1", image=("photo.png", picture, "image/png"), prompt="add a small boat"
)
edited = raw.parse()
extra = edited.model_extra or {}
check(raw.headers["x-file-sha256"] == sha(picture), "the image reached the provider altered")
check(extra["image"]["bytes"] == len(picture) and extra["model"] == "gpt-image-1", extra)
check(extra["body"]["sha256"] == last()["request_sha256"], (extra, last()))
check(base64.b64decode(edited.data[0].b64_json).startswith(b"\x89PNG"), "not an image")

# Files: upload, list, retrieve, download (the same bytes), delete.
label = "file_upload"
document = os.urandom(2 * 1024 * 1024 + 123)
uploaded = client.files.create(file=("notes.jsonl", document), purpose="assistants")
check(uploaded.bytes == len(document) and uploaded.filename == "notes.jsonl", uploaded)
check(uploaded.purpose == "assistants", uploaded)

label = "file_list"
listed = [f.id for f in client.files.list()]
check(uploaded.id in listed, listed)

label = "file_retrieve"
retrieved = client.files.retrieve(uploaded.id)
check(retrieved.id == uploaded.id and retrieved.bytes == len(document), retrieved)

label = "file_content"
content = client.files.content(uploaded.id)
check(content.content == document, "the downloaded file differs from the uploaded one")
check(last()["response_sha256"] == sha(document), last())

label = "file_delete"
deleted = client.files.delete(uploaded.id)
check(deleted.deleted and deleted.id == uploaded.id, deleted)

label = "file_retrieve_deleted"
try:
    client.files.retrieve(uploaded.id)
    sys.exit("a deleted file could still be retrieved")
except openai.NotFoundError as e:
    check(e.status_code == 404, e)

# Chat with an image (data URL) and a PDF (file content part): the provider reads
# exactly the body the SDK sent.
label = "chat_vision_pdf"
png = b"\x89PNG\r\n\x1a\n" + os.urandom(96 * 1024)
pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" + os.urandom(200 * 1024) + b"\n%%EOF\n"
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o",
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What do this picture and this document show?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {
                    "type": "file",
                    "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64," + base64.b64encode(pdf).decode()},
                },
            ],
        }
    ],
)
reply = raw.parse()
check(raw.headers["x-body-sha256"] == last()["request_sha256"], "the chat body reached the provider altered")
check(int(raw.headers["x-body-bytes"]) == last()["request_bytes"], (raw.headers, last()))
check(reply.choices[0].message.content.endswith("parts: text, image_url, file"), reply)
check(reply.usage.prompt_tokens > 0, reply.usage)

# A key locked to gpt-4o-transcribe: whisper-1 is refused before anything reaches the
# provider; the allowed model passes.
locked = client_for(locked_key)
label = "locked_refused"
try:
    locked.audio.transcriptions.create(model="whisper-1", file=("meeting.mp3", audio[: 1024 * 1024]))
    sys.exit("a model outside the key's allow-list was accepted")
except openai.PermissionDeniedError as e:
    check(e.status_code == 403 and e.code == "model_not_allowed", e)

label = "locked_allowed"
allowed = locked.audio.transcriptions.create(model="gpt-4o-transcribe", file=("meeting.mp3", audio[:65536]))
check((allowed.model_extra or {})["model"] == "gpt-4o-transcribe", allowed)

check(not current, f"requests without an answer: {current}")
with open(os.path.join(out, "exchanges.json"), "w") as f:
    json.dump(exchanges, f, indent=1)
print(f"media sdk checks passed ({len(exchanges)} exchanges)")
