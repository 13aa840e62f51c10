//! Sending the uploads and checking every answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use serde_json::Value;
use sg_testkit::media_upstream::{FormDigest, GeneratedForm};

/// The model named in every form.
pub const MODEL: &str = "whisper-1";
/// Where the forms go, on either target.
pub const ENDPOINT: &str = "/v1/audio/transcriptions";

/// One target, as the client sees it.
pub struct Target {
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The `Authorization` header's value; may hold a proxy key, so never printed.
    pub authorization: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One upload: how to generate it, and what the upstream must report for it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub seed: u64,
    pub file_bytes: u64,
    pub piece: usize,
    pub digest: FormDigest,
}

impl Upload {
    /// Generates the form once to know its digest (CPU-bound: run it off the runtime).
    pub fn prepare(seed: u64, file_bytes: u64, piece: usize) -> Self {
        let digest = GeneratedForm::new(MODEL, file_bytes, seed, piece).digest();
        Self {
            seed,
            file_bytes,
            piece,
            digest,
        }
    }

    fn form(&self) -> GeneratedForm {
        GeneratedForm::new(MODEL, self.file_bytes, self.seed, self.piece)
    }
}

pub fn client(concurrency: usize, timeout: Duration) -> anyhow::Result<Client> {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .build()
        .context("building the upload client")
}

/// Checks the upstream's answer: the file and the whole body it received are exactly
/// those of the form.
pub fn check_answer(text: &str, expected: &FormDigest) -> Result<(), String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let got = |part: &str, field: &str| v.get(part).and_then(|p| p.get(field)).cloned();
    let checks = [
        (
            "file.sha256",
            got("file", "sha256"),
            Value::from(expected.file_sha256.as_str()),
        ),
        (
            "file.bytes",
            got("file", "bytes"),
            Value::from(expected.file_bytes),
        ),
        (
            "body.sha256",
            got("body", "sha256"),
            Value::from(expected.body_sha256.as_str()),
        ),
        (
            "body.bytes",
            got("body", "bytes"),
            Value::from(expected.body_bytes),
        ),
    ];
    for (name, got, want) in checks {
        match got {
            Some(got) if got == want => {}
            Some(got) => return Err(format!("{name} is {got}, the form's is {want}")),
            None => return Err(format!("the answer has no {name}")),
        }
    }
    Ok(())
}

/// The first `limit` characters of an answer, for an error message.
fn excerpt(text: &str, limit: usize) -> String {
    let mut out: String = text.chars().take(limit).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Sends one upload, streamed, and checks the answer; returns how long it took.
pub async fn send_one(
    client: &Client,
    target: &Target,
    upload: &Upload,
) -> anyhow::Result<Duration> {
    let form = upload.form();
    let started = Instant::now();
    let answer = client
        .post(format!("{}{ENDPOINT}", target.base))
        .header(AUTHORIZATION, &target.authorization)
        .header(CONTENT_TYPE, form.content_type())
        .header(CONTENT_LENGTH, form.len())
        .body(form.into_reqwest_body())
        .send()
        .await
        .context("sending the upload")?;
    let status = answer.status();
    let text = answer.text().await.context("reading the answer")?;
    let took = started.elapsed();
    if status != reqwest::StatusCode::OK {
        bail!("answered {status}: {}", excerpt(&text, 400));
    }
    if let Err(e) = check_answer(&text, &upload.digest) {
        bail!("the upstream did not receive the form intact: {e}");
    }
    Ok(took)
}

/// Sends every upload, at most `concurrency` at a time; stops at the first failure.
pub async fn send_all(
    client: &Client,
    target: &Target,
    uploads: &[Upload],
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let done = AtomicUsize::new(0);
    let total = uploads.len();
    let done = &done;
    futures::stream::iter(uploads.iter().enumerate())
        .map(|(i, upload)| async move {
            let took = send_one(client, target, upload).await.with_context(|| {
                format!(
                    "{}: upload {} of {total} (seed {})",
                    target.name,
                    i + 1,
                    upload.seed
                )
            })?;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!(
                "  {}: {n}/{total} uploads done ({:.2} s, checked)",
                target.name,
                took.as_secs_f64()
            );
            Ok::<_, anyhow::Error>(took)
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> FormDigest {
        FormDigest {
            file_sha256: "aa".into(),
            file_bytes: 10,
            body_sha256: "bb".into(),
            body_bytes: 200,
        }
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let good = r#"{"text":"x","file":{"filename":"audio.mp3","bytes":10,"sha256":"aa"},"body":{"bytes":200,"sha256":"bb"}}"#;
        assert_eq!(check_answer(good, &digest()), Ok(()));
        let bad = good.replace("\"sha256\":\"bb\"", "\"sha256\":\"cc\"");
        assert_eq!(
            check_answer(&bad, &digest()),
            Err("body.sha256 is \"cc\", the form's is \"bb\"".into())
        );
        let short = good.replace("\"bytes\":10", "\"bytes\":9");
        assert!(
            check_answer(&short, &digest())
                .unwrap_err()
                .starts_with("file.bytes is 9")
        );
        assert_eq!(
            check_answer(r#"{"file":{"bytes":10,"sha256":"aa"}}"#, &digest()),
            Err("the answer has no body.sha256".into())
        );
        assert!(
            check_answer("<html>", &digest())
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn excerpts_are_cut_on_characters() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("ééééé", 2), "éé…");
    }

    #[test]
    fn a_prepared_upload_knows_its_digest() {
        let u = Upload::prepare(3, 1000, 64);
        assert_eq!(u.digest.file_bytes, 1000);
        assert_eq!(u.digest.body_bytes, u.form().len());
        assert_eq!(u.digest, u.form().digest());
    }
}
