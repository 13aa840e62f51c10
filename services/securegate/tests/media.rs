#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Audio, images and files through a real `securegate dev` process to an OpenAI-compatible
//! media stand-in: driven by the official OpenAI Python SDK, unchanged but for `base_url`
//! and `api_key`, and by hand-built multipart forms. Uploads arrive byte for byte, binary
//! answers come back byte for byte, forms are decided on their `model` field, and the
//! request history counts the bytes each way.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sg_testkit::MediaUpstream;
use sg_testkit::media_upstream::{
    GeneratedForm, MediaRequest, image_bytes, pseudo_random_bytes, sha256_hex, speech_audio,
};
use support::*;

const PROVIDER_KEY: &str = "sk-media-provider-key-0123456789";
/// The gateway's `--max-body-bytes`: what it may read whole, or before a form's model.
const MAX_BODY: usize = 1024 * 1024;
const SPEECH_INPUT: &str = "The quick brown fox jumps over the lazy dog, twice over.";
const IMAGE_PROMPT: &str = "a lighthouse on a rock at dawn";

async fn require_openai_sdk() {
    let probe = tokio::process::Command::new(sg_testkit::python())
        .args(["-c", "import openai"])
        .output()
        .await
        .expect("python3 is needed for the SDK test: install it (e.g. `apt-get install python3 python3-pip`)");
    assert!(
        probe.status.success(),
        "the official OpenAI Python SDK is missing from {}: `{} -m pip install openai` (.ci/run installs it; SG_PYTHON or an active virtual environment picks the interpreter)",
        sg_testkit::python().display(),
        sg_testkit::python().display()
    );
}

/// A `dev` gateway with a small `--max-body-bytes`, a project whose `openai` connection
/// points at the stand-in, and a key without locks: (dev, project, key).
async fn world(upstream: &MediaUpstream) -> (Dev, String, String) {
    let max_body = MAX_BODY.to_string();
    let dev = Dev::start(&["--max-body-bytes", &max_body], &[]).await;
    let (project, _, key) = dev
        .admin
        .setup(
            json!({"provider": "openai", "api_key": PROVIDER_KEY, "base_url": upstream.base_url()}),
        )
        .await;
    (dev, project, key)
}

/// The project's request history once it holds `n` requests (waits at most 10 s).
async fn history_reaching(admin: &AdminClient, project: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, list) = admin
            .get(&format!("/projects/{project}/requests?limit=1000"))
            .await;
        assert_eq!(s, 200, "{list}");
        let rows = list["data"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "the request history did not reach {n}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn by_request_id(rows: &[Value]) -> HashMap<String, Value> {
    rows.iter()
        .map(|r| (r["request_id"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

/// The stand-in's one record of the request sent with `x-client-request-id: id`.
fn reached(upstream: &MediaUpstream, id: &str) -> MediaRequest {
    let records = upstream.recorded_with_client_id(id);
    assert_eq!(
        records.len(),
        1,
        "{id}: expected one request at the provider, found {records:?}"
    );
    records.into_iter().next().unwrap()
}

#[tokio::test]
async fn official_sdk_uploads_downloads_and_speech_arrive_byte_for_byte() {
    require_openai_sdk().await;
    let upstream = MediaUpstream::start(PROVIDER_KEY).await.unwrap();
    let (dev, project, key) = world(&upstream).await;
    let (s, locked) = dev
        .admin
        .post(
            &format!("/projects/{project}/keys"),
            json!({"name": "transcribe-only", "locks": {"models": ["gpt-4o-transcribe"]}}),
        )
        .await;
    assert_eq!(s, 201, "{locked}");
    let locked = locked["key"].as_str().unwrap().to_owned();

    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_media.py");
    let run = tokio::process::Command::new(sg_testkit::python())
        .arg(script)
        .env("SG_BASE_URL", format!("{}/v1", dev.gateway.url()))
        .env("SG_KEY", &key)
        .env("SG_LOCKED_KEY", &locked)
        .env("SG_OUT", out.path())
        .env("SG_SPEECH_INPUT", SPEECH_INPUT)
        .env("SG_IMAGE_PROMPT", IMAGE_PROMPT)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        dev.gateway.log()
    );
    assert!(stdout.contains("media sdk checks passed"), "{stdout}");

    // The binary answers are the stand-in's, byte for byte.
    let speech = std::fs::read(out.path().join("speech.bin")).unwrap();
    assert!(speech.len() > 3 * sg_testkit::media_upstream::SPEECH_PIECE);
    assert!(speech == speech_audio(SPEECH_INPUT), "the speech differs");
    let generated = std::fs::read(out.path().join("generated.bin")).unwrap();
    assert!(generated == image_bytes(IMAGE_PROMPT), "the image differs");

    let exchanges: Vec<Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("exchanges.json")).unwrap()).unwrap();
    let labels: Vec<&str> = exchanges
        .iter()
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "transcription",
            "translation",
            "speech",
            "image_generation",
            "image_edit",
            "file_upload",
            "file_list",
            "file_retrieve",
            "file_content",
            "file_delete",
            "file_retrieve_deleted",
            "chat_vision_pdf",
            "locked_refused",
            "locked_allowed",
        ]
    );
    let transcription = &exchanges[0];
    assert!(
        transcription["request_bytes"].as_u64().unwrap() > 6 * 1024 * 1024,
        "{transcription}"
    );

    // What the SDK sent is what the provider received, whole; the refused request never
    // reached it.
    for e in &exchanges {
        let label = e["label"].as_str().unwrap();
        let id = e["client_request_id"].as_str().unwrap();
        if label == "locked_refused" {
            assert_eq!(e["status"], 403, "{e}");
            assert!(
                upstream.recorded_with_client_id(id).is_empty(),
                "a request refused by the model lock reached the provider"
            );
            continue;
        }
        let r = reached(&upstream, id);
        assert!(r.complete, "{label}: {r:?}");
        assert_eq!(Some(r.body_bytes), e["request_bytes"].as_u64(), "{label}");
        assert_eq!(
            r.body_sha256,
            e["request_sha256"].as_str().unwrap(),
            "{label}: the provider read another body than the SDK sent"
        );
        assert_eq!(
            u64::from(r.status),
            e["status"].as_u64().unwrap(),
            "{label}"
        );
        assert_eq!(
            r.header("authorization").as_deref(),
            Some(format!("Bearer {PROVIDER_KEY}").as_str()),
            "{label}: the provider got another credential than the connection's"
        );
    }
    assert_eq!(
        upstream.request_count() as usize,
        exchanges.len() - 1,
        "only the refused request stays at the gateway"
    );
    let transcription = reached(
        &upstream,
        exchanges[0]["client_request_id"].as_str().unwrap(),
    );
    assert_eq!(transcription.model.as_deref(), Some("whisper-1"));
    assert_eq!(transcription.file_bytes, Some(6 * 1024 * 1024));

    // The request history counts each request's bytes each way.
    let rows = history_reaching(&dev.admin, &project, exchanges.len()).await;
    assert_eq!(rows.len(), exchanges.len());
    let rows = by_request_id(&rows);
    for e in &exchanges {
        let label = e["label"].as_str().unwrap();
        let id = e["request_id"].as_str().unwrap();
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("{label}: {id} is not in the history"));
        assert_eq!(row["status"], e["status"], "{label}: {row}");
        assert_eq!(row["endpoint"], e["path"], "{label}: {row}");
        if label == "locked_refused" {
            assert_eq!(row["model"], "whisper-1", "{row}");
            assert!(
                row["request_bytes"].as_u64().unwrap() <= e["request_bytes"].as_u64().unwrap(),
                "{row} vs {e}"
            );
            continue;
        }
        assert_eq!(
            row["request_bytes"], e["request_bytes"],
            "{label}: request bytes in the history: {row} vs sent {e}"
        );
        assert_eq!(
            row["response_bytes"], e["response_bytes"],
            "{label}: response bytes in the history: {row} vs received {e}"
        );
    }
}

/// A `multipart/form-data` body of `parts` (name, filename, content), in order.
fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// What the client saw of one request.
struct Sent {
    status: u16,
    body: String,
    request_id: String,
    client_id: String,
    request_bytes: u64,
}

async fn send_form(gw: &str, key: &str, label: &str, body: Vec<u8>) -> Sent {
    let client_id = format!("media-test-{label}");
    let request_bytes = body.len() as u64;
    let r = reqwest::Client::new()
        .post(format!("{gw}/v1/audio/transcriptions"))
        .bearer_auth(key)
        .header(
            "content-type",
            "multipart/form-data; boundary=sg-test-boundary",
        )
        .header("x-client-request-id", &client_id)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("{label}: the gateway's answer did not reach the client: {e:?}")
        });
    let status = r.status().as_u16();
    let request_id = r.headers()["x-securegate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    Sent {
        status,
        body: r.text().await.unwrap(),
        request_id,
        client_id,
        request_bytes,
    }
}

/// Waits until the stand-in has finished every request it received; then no request sent
/// with `client_id` may have reached it whole.
async fn none_complete_at_the_provider(upstream: &MediaUpstream, client_id: &str) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream.in_flight() == 0
        })
        .await,
        "the stand-in kept a request open"
    );
    for r in upstream.recorded_with_client_id(client_id) {
        assert!(
            !r.complete && r.status == 400,
            "{client_id}: a form the gateway refused reached the provider whole: {r:?}"
        );
    }
}

#[tokio::test]
async fn forms_are_decided_on_their_model_field_and_never_reach_the_provider_refused() {
    let upstream = MediaUpstream::start(PROVIDER_KEY).await.unwrap();
    let (dev, project, key) = world(&upstream).await;
    let gw = dev.gateway.url();
    const B: &str = "sg-test-boundary";

    // Two `model` fields, the second after a 2 MiB file: the upload is already streaming
    // when the second one arrives; it is cut off, and the client gets the refusal.
    let audio = pseudo_random_bytes(1, 2 * 1024 * 1024);
    let body = form(
        B,
        &[
            ("model", None, b"whisper-1"),
            ("file", Some("a.mp3"), &audio),
            ("model", None, b"gpt-4o-transcribe"),
        ],
    );
    let late_duplicate = send_form(&gw, &key, "late-duplicate", body).await;
    assert_eq!(late_duplicate.status, 400, "{}", late_duplicate.body);
    assert_error(&late_duplicate.body, "duplicate_field");
    none_complete_at_the_provider(&upstream, &late_duplicate.client_id).await;

    // Two `model` fields before the file.
    let small = pseudo_random_bytes(2, 10_000);
    let body = form(
        B,
        &[
            ("model", None, b"whisper-1"),
            ("model", None, b"whisper-1"),
            ("file", Some("a.mp3"), &small),
        ],
    );
    let early_duplicate = send_form(&gw, &key, "early-duplicate", body).await;
    assert_eq!(early_duplicate.status, 400, "{}", early_duplicate.body);
    assert_error(&early_duplicate.body, "duplicate_field");
    none_complete_at_the_provider(&upstream, &early_duplicate.client_id).await;

    // The model after a file larger than --max-body-bytes: the file would have to be held
    // whole before the model is known, so the form is refused, naming `model`.
    let big = pseudo_random_bytes(3, MAX_BODY + MAX_BODY / 2);
    let before = upstream.request_count();
    let body = form(
        B,
        &[("file", Some("a.mp3"), &big), ("model", None, b"whisper-1")],
    );
    let model_last = send_form(&gw, &key, "model-last", body).await;
    assert_eq!(model_last.status, 413, "{}", model_last.body);
    assert_error(&model_last.body, "request_too_large");
    let error: Value = serde_json::from_str(&model_last.body).unwrap();
    assert_eq!(error["error"]["param"], "model", "{error}");
    assert_eq!(
        upstream.request_count(),
        before,
        "a form refused before its model reached the provider"
    );

    // The same form with the model first passes whole, even at three times the limit.
    let file = pseudo_random_bytes(4, 3 * MAX_BODY);
    let body = form(
        B,
        &[
            ("model", None, b"whisper-1"),
            ("file", Some("a.mp3"), &file),
        ],
    );
    let body_sha = sha256_hex(&body);
    let model_first = send_form(&gw, &key, "model-first", body).await;
    assert_eq!(model_first.status, 200, "{}", model_first.body);
    let answer: Value = serde_json::from_str(&model_first.body).unwrap();
    assert_eq!(answer["file"]["sha256"], sha256_hex(&file), "{answer}");
    assert_eq!(answer["file"]["bytes"], file.len(), "{answer}");
    assert_eq!(answer["body"]["sha256"], body_sha.as_str(), "{answer}");
    assert_eq!(answer["model"], "whisper-1", "{answer}");
    let r = reached(&upstream, &model_first.client_id);
    assert!(r.complete && r.body_sha256 == body_sha, "{r:?}");

    // A form the client streams in pieces, without Content-Length (chunked).
    let generated = GeneratedForm::new("whisper-1", 3 * MAX_BODY as u64 + 17, 5, 32 * 1024);
    let digest = generated.digest();
    let r = reqwest::Client::new()
        .post(format!("{gw}/v1/audio/transcriptions"))
        .bearer_auth(&key)
        .header("content-type", generated.content_type())
        .header("x-client-request-id", "media-test-chunked")
        .body(generated.into_reqwest_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chunked_request_id = r.headers()["x-securegate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let chunked_answer = r.text().await.unwrap();
    let answer: Value = serde_json::from_str(&chunked_answer).unwrap();
    assert_eq!(
        answer["file"]["sha256"],
        digest.file_sha256.as_str(),
        "{answer}"
    );
    assert_eq!(
        answer["body"]["sha256"],
        digest.body_sha256.as_str(),
        "{answer}"
    );
    let r = reached(&upstream, "media-test-chunked");
    assert!(r.complete && r.body_bytes == digest.body_bytes, "{r:?}");

    // The history: every request, with the bytes of those that passed each way.
    let rows = by_request_id(&history_reaching(&dev.admin, &project, 5).await);
    for (sent, status) in [
        (&late_duplicate, 400),
        (&early_duplicate, 400),
        (&model_last, 413),
        (&model_first, 200),
    ] {
        let row = &rows[&sent.request_id];
        assert_eq!(row["status"], status, "{row}");
        assert!(
            row["request_bytes"].as_u64().unwrap() <= sent.request_bytes,
            "{row}: more bytes counted than sent ({})",
            sent.request_bytes
        );
    }
    let row = &rows[&model_first.request_id];
    assert_eq!(row["request_bytes"], model_first.request_bytes, "{row}");
    assert_eq!(row["response_bytes"], model_first.body.len(), "{row}");
    assert_eq!(row["model"], "whisper-1", "{row}");
    let row = &rows[&chunked_request_id];
    assert_eq!(row["request_bytes"], digest.body_bytes, "{row}");
    assert_eq!(row["response_bytes"], chunked_answer.len(), "{row}");
}
