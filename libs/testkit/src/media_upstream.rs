//! A stand-in for OpenAI's media endpoints as a real HTTP server on 127.0.0.1: audio,
//! images and files, plus chat completions that report the exact body they received
//! (for vision and PDF inputs). Every request must carry `Authorization: Bearer <key>`
//! (401 `invalid_api_key` otherwise).
//!
//! - `POST /v1/audio/transcriptions`, `POST /v1/audio/translations` (multipart `file` and
//!   `model`): `{"text": …, "model": …, "file": {"filename", "bytes", "sha256"},
//!   "body": {"bytes", "sha256"}, "model_fields": N}` — the SHA-256 (hex) and length of
//!   the uploaded `file` part's bytes and of the whole request body, and the `model` field
//!   it read. The same figures come as headers ([`FILE_SHA256`], [`FILE_BYTES`],
//!   [`BODY_SHA256`], [`BODY_BYTES`], [`MODEL`]).
//! - `POST /v1/audio/speech` (JSON `model`, `input`, `voice`): [`speech_audio`]`(input)`,
//!   sent in pieces of [`SPEECH_PIECE`] bytes with `Content-Type: audio/mpeg` (or the
//!   type of `response_format`).
//! - `POST /v1/images/generations` (JSON `prompt`): `n` images (default 1), each
//!   [`image_bytes`]`(prompt)` as `b64_json`.
//! - `POST /v1/images/edits` (multipart `image` or `image[]`, `prompt`, `model`): one
//!   image, [`image_bytes`]`(prompt)`, plus `image` (the first image part's filename,
//!   length and hash), `images`, `body` and `model` as above, and the headers.
//! - `POST /v1/files` (multipart `purpose` and `file`), `GET /v1/files` (`purpose` and
//!   `order` understood), `GET /v1/files/{id}`, `GET /v1/files/{id}/content` (the stored
//!   bytes, in pieces of [`CONTENT_PIECE`]), `DELETE /v1/files/{id}`: files kept in
//!   memory, in OpenAI's shapes.
//! - `POST /v1/chat/completions` (JSON, not streamed): a chat completion whose text names
//!   the body's length, hash and content part types; the hash and length also as headers.
//!
//! Multipart bodies are read as they arrive, never held whole (except a file stored by
//! `POST /v1/files`). Each request is recorded as a [`MediaRequest`] once it is answered
//! (or its body was cut off): method, path, headers, and the body's length and hash, not
//! the body itself, so uploads of tens of MB do not pile up. A body that ends before its
//! declared end (a sender that aborted it) is recorded with `complete: false` and
//! answered 400.
//!
//! [`GeneratedForm`] builds a transcription upload of any size piece by piece, for
//! clients that must not hold it whole either.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Header: SHA-256 (hex) of the whole request body.
pub const BODY_SHA256: &str = "x-body-sha256";
/// Header: length of the whole request body.
pub const BODY_BYTES: &str = "x-body-bytes";
/// Header: SHA-256 (hex) of the uploaded file part (`file`, or the first image).
pub const FILE_SHA256: &str = "x-file-sha256";
/// Header: length of the uploaded file part.
pub const FILE_BYTES: &str = "x-file-bytes";
/// Header: the `model` field the stand-in read (the first, when there are several).
pub const MODEL: &str = "x-model";

/// Bytes of speech per character of input.
pub const SPEECH_BYTES_PER_CHAR: usize = 1024;
/// Size of the pieces a speech answer is sent in.
pub const SPEECH_PIECE: usize = 16 * 1024;
/// Size of the pieces a file's content is sent in.
pub const CONTENT_PIECE: usize = 64 * 1024;
/// Bytes of every generated image after the PNG signature.
pub const IMAGE_BYTES: usize = 4096;

/// Largest JSON body read.
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// Largest text field of a form kept (longer ones are counted, not kept).
const MAX_TEXT_FIELD: usize = 64 * 1024;
/// Pieces of a body buffered between the socket and the form reader.
const PUMP_DEPTH: usize = 4;
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct MediaRequest {
    pub method: String,
    /// Path and query, exactly as received.
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Bytes of the body received.
    pub body_bytes: u64,
    /// SHA-256 (hex) of the body received.
    pub body_sha256: String,
    /// The body was read to its end; `false` when the sender cut it off.
    pub complete: bool,
    /// The `model` field or JSON member it read, if any (the first of several).
    pub model: Option<String>,
    /// How many `model` fields a form had.
    pub model_fields: usize,
    /// Length and SHA-256 (hex) of the uploaded file part, for uploads.
    pub file_bytes: Option<u64>,
    pub file_sha256: Option<String>,
    /// The status it answered with.
    pub status: u16,
}

impl MediaRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

struct StoredFile {
    id: String,
    filename: String,
    purpose: String,
    created_at: u64,
    content: Bytes,
}

impl StoredFile {
    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.content.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

struct Shared {
    api_key: String,
    received: AtomicU64,
    recorded: Mutex<Vec<MediaRequest>>,
    files: Mutex<Vec<StoredFile>>,
    next_id: AtomicU64,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        format!("{prefix}-sg{n:020}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The media stand-in, stopped when dropped. See the [module docs](self).
pub struct MediaUpstream {
    port: u16,
    shared: Arc<Shared>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for MediaUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaUpstream")
            .field("base_url", &self.base_url())
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl MediaUpstream {
    /// Serves on a free port, accepting `Authorization: Bearer <api_key>`.
    pub async fn start(api_key: impl Into<String>) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the media stand-in to 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("reading the media stand-in's port")?
            .port();
        let shared = Arc::new(Shared {
            api_key: api_key.into(),
            received: AtomicU64::new(0),
            recorded: Mutex::new(Vec::new()),
            files: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .fallback(handle)
            // Uploads are read as they arrive, whatever their size.
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("the media stand-in on port {port} failed: {e}");
            }
        });
        Ok(Self {
            port,
            shared,
            running: Some((shutdown, task)),
        })
    }

    /// `http://127.0.0.1:PORT/v1`, as `https://api.openai.com/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests received since start (or the last [`reset`](Self::reset)), answered or not.
    pub fn request_count(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// Requests received but not recorded yet (still being read or answered).
    pub fn in_flight(&self) -> u64 {
        let recorded = lock(&self.shared.recorded).len() as u64;
        self.request_count().saturating_sub(recorded)
    }

    /// Every request answered (or cut off) since start or the last reset, in the order
    /// they finished.
    pub fn recorded(&self) -> Vec<MediaRequest> {
        lock(&self.shared.recorded).clone()
    }

    /// The recorded requests carrying `x-client-request-id: id`.
    pub fn recorded_with_client_id(&self, id: &str) -> Vec<MediaRequest> {
        lock(&self.shared.recorded)
            .iter()
            .filter(|r| r.header("x-client-request-id").as_deref() == Some(id))
            .cloned()
            .collect()
    }

    /// How many files are stored.
    pub fn file_count(&self) -> usize {
        lock(&self.shared.files).len()
    }

    /// Forgets the counted and recorded requests (stored files stay).
    pub fn reset(&self) {
        let mut recorded = lock(&self.shared.recorded);
        self.shared
            .received
            .fetch_sub(recorded.len() as u64, Ordering::SeqCst);
        recorded.clear();
    }
}

impl Drop for MediaUpstream {
    fn drop(&mut self) {
        if let Some((shutdown, task)) = self.running.take() {
            let _ = shutdown.send(());
            task.abort();
        }
    }
}

// ---- deterministic content -------------------------------------------------------------

/// `len` pseudo-random bytes, the same for the same `seed` (splitmix64).
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut rng = SplitMix(seed);
    while out.len() < len {
        let word = rng.next().to_le_bytes();
        let take = word.len().min(len - out.len());
        out.extend_from_slice(&word[..take]);
    }
    out
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn seed_of(text: &str) -> u64 {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(seed)
}

/// The audio `POST /v1/audio/speech` answers for `input`: [`SPEECH_BYTES_PER_CHAR`] bytes
/// per character (at least one character's worth), derived from the input alone.
pub fn speech_audio(input: &str) -> Vec<u8> {
    let len = SPEECH_BYTES_PER_CHAR * input.chars().count().max(1);
    let mut audio = b"ID3\x04\x00\x00".to_vec();
    audio.extend(pseudo_random_bytes(seed_of(input), len - audio.len()));
    audio
}

/// The image `POST /v1/images/generations` and `/v1/images/edits` answer for `prompt`:
/// a PNG signature and [`IMAGE_BYTES`] bytes derived from the prompt.
pub fn image_bytes(prompt: &str) -> Vec<u8> {
    let mut image = PNG_SIGNATURE.to_vec();
    image.extend(pseudo_random_bytes(seed_of(prompt), IMAGE_BYTES));
    image
}

// ---- digests --------------------------------------------------------------------------

/// A SHA-256 fed piece by piece, for checking that bytes arrived intact.
#[derive(Clone, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.0, data);
    }

    /// The digest as lowercase hex.
    pub fn finish_hex(self) -> String {
        hex::encode(sha2::Digest::finalize(self.0))
    }
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

// ---- a generated upload ----------------------------------------------------------------

/// What a [`GeneratedForm`] consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormDigest {
    /// SHA-256 (hex) and length of the file part's bytes.
    pub file_sha256: String,
    pub file_bytes: u64,
    /// SHA-256 (hex) and length of the whole body.
    pub body_sha256: String,
    pub body_bytes: u64,
}

/// A `multipart/form-data` transcription form (`model` first, then a `file` of
/// pseudo-random bytes), produced piece by piece so that neither side holds it whole.
#[derive(Debug, Clone)]
pub struct GeneratedForm {
    boundary: String,
    model: String,
    file_bytes: u64,
    seed: u64,
    piece: usize,
}

impl GeneratedForm {
    /// A form naming `model`, with a file of `file_bytes` bytes derived from `seed`, sent
    /// in pieces of `piece` bytes (at least 8).
    pub fn new(model: &str, file_bytes: u64, seed: u64, piece: usize) -> Self {
        Self {
            boundary: format!("sg-generated-{}", hex::encode(seed.to_be_bytes())),
            model: model.to_owned(),
            file_bytes,
            seed,
            piece: piece.max(8),
        }
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    fn head(&self) -> String {
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{m}\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.mp3\"\r\n\
             Content-Type: audio/mpeg\r\n\r\n",
            b = self.boundary,
            m = self.model
        )
    }

    fn tail(&self) -> String {
        format!("\r\n--{}--\r\n", self.boundary)
    }

    /// The whole body's length (its `Content-Length`).
    pub fn len(&self) -> u64 {
        self.head().len() as u64 + self.file_bytes + self.tail().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The body's pieces, in order, generated as they are asked for.
    pub fn pieces(&self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let head = Bytes::from(self.head());
        let tail = Bytes::from(self.tail());
        let mut rng = SplitMix(self.seed);
        let mut left = self.file_bytes;
        let piece = self.piece as u64;
        let file = std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(piece) as usize;
            left -= n as u64;
            let mut out = Vec::with_capacity(n + 8);
            while out.len() < n {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            out.truncate(n);
            Some(Bytes::from(out))
        });
        std::iter::once(head)
            .chain(file)
            .chain(std::iter::once(tail))
    }

    /// Generates the form once to compute what the stand-in should report for it.
    pub fn digest(&self) -> FormDigest {
        let mut file = Sha256::new();
        let mut body = Sha256::new();
        let mut body_bytes = 0u64;
        let head_len = self.head().len() as u64;
        for (i, piece) in self.pieces().enumerate() {
            body.update(&piece);
            body_bytes += piece.len() as u64;
            let is_file = i > 0 && body_bytes <= head_len + self.file_bytes;
            if is_file {
                file.update(&piece);
            }
        }
        FormDigest {
            file_sha256: file.finish_hex(),
            file_bytes: self.file_bytes,
            body_sha256: body.finish_hex(),
            body_bytes,
        }
    }

    /// The body as a streamed `reqwest` body (the caller sets `Content-Type`, and
    /// `Content-Length` to [`len`](Self::len)).
    pub fn into_reqwest_body(self) -> reqwest::Body {
        let pieces = self.pieces();
        reqwest::Body::wrap_stream(futures::stream::iter(pieces.map(Ok::<Bytes, Infallible>)))
    }
}

// ---- serving ---------------------------------------------------------------------------

/// What was read of a body: its length, hash, and whether it ended as declared.
#[derive(Debug, Clone, Default)]
struct Tally {
    bytes: u64,
    sha256: String,
    complete: bool,
}

/// Reads a request body to its end in its own task, hashing every byte and passing the
/// pieces on to whoever reads them (until they stop reading).
struct Incoming {
    pieces: Option<mpsc::Receiver<Bytes>>,
    task: Option<JoinHandle<Tally>>,
    settled: Option<Tally>,
}

impl Incoming {
    fn start(body: Body) -> Self {
        let (tx, rx) = mpsc::channel::<Bytes>(PUMP_DEPTH);
        let task = tokio::spawn(async move {
            let mut sha = Sha256::new();
            let mut bytes = 0u64;
            let mut complete = false;
            let mut stream = body.into_data_stream();
            let mut tx = Some(tx);
            loop {
                match stream.next().await {
                    None => {
                        complete = true;
                        break;
                    }
                    Some(Err(_)) => break,
                    Some(Ok(piece)) => {
                        sha.update(&piece);
                        bytes += piece.len() as u64;
                        if let Some(sender) = &tx
                            && sender.send(piece).await.is_err()
                        {
                            tx = None;
                        }
                    }
                }
            }
            Tally {
                bytes,
                sha256: sha.finish_hex(),
                complete,
            }
        });
        Self {
            pieces: Some(rx),
            task: Some(task),
            settled: None,
        }
    }

    /// The body's pieces as a body of their own (once).
    fn body(&mut self) -> Body {
        match self.pieces.take() {
            Some(rx) => Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|piece| (Ok::<Bytes, Infallible>(piece), rx))
            })),
            None => Body::empty(),
        }
    }

    /// Up to `limit` bytes of the body, whole.
    async fn bytes(&mut self, limit: usize) -> Option<Vec<u8>> {
        let mut rx = self.pieces.take()?;
        let mut out = Vec::new();
        while let Some(piece) = rx.recv().await {
            if out.len() + piece.len() > limit {
                return None;
            }
            out.extend_from_slice(&piece);
        }
        Some(out)
    }

    /// Reads what is left of the body (without passing it on); its tally.
    async fn settle(&mut self) -> Tally {
        drop(self.pieces.take());
        if let Some(task) = self.task.take() {
            self.settled = Some(task.await.unwrap_or_default());
        }
        self.settled.clone().unwrap_or_default()
    }
}

/// What a handler learnt about the request, for its record.
#[derive(Default)]
struct Seen {
    model: Option<String>,
    model_fields: usize,
    file: Option<(u64, String)>,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.received.fetch_add(1, Ordering::SeqCst);
    // Answered in a task of its own, so that a request whose client goes away is still
    // read to its end (or its cut) and recorded.
    let task = tokio::spawn(serve(shared, request));
    match task.await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "the media stand-in failed",
            None,
        ),
    }
}

async fn serve(shared: Arc<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = parts.headers.clone();
    let mut incoming = Incoming::start(body);
    let mut seen = Seen::default();

    let expected = format!("Bearer {}", shared.api_key);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let response = if !authorized {
        error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
            None,
        )
    } else {
        route(&shared, parts, &mut incoming, &mut seen).await
    };
    let tally = incoming.settle().await;
    let (response, status) = if tally.complete {
        let status = response.status().as_u16();
        (response, status)
    } else {
        let response = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "incomplete_body",
            "the request body ended before its declared end",
            None,
        );
        (response, 400)
    };
    lock(&shared.recorded).push(MediaRequest {
        method: method.to_string(),
        path_and_query,
        headers,
        body_bytes: tally.bytes,
        body_sha256: tally.sha256,
        complete: tally.complete,
        model: seen.model,
        model_fields: seen.model_fields,
        file_bytes: seen.file.as_ref().map(|f| f.0),
        file_sha256: seen.file.map(|f| f.1),
        status,
    });
    response
}

async fn route(
    shared: &Arc<Shared>,
    parts: axum::http::request::Parts,
    incoming: &mut Incoming,
    seen: &mut Seen,
) -> Response {
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.strip_prefix("/v1/").unwrap_or("").split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["audio", kind @ ("transcriptions" | "translations")]) => {
            let kind = (*kind).to_owned();
            match read_form(parts, incoming, false).await {
                Ok(form) => audio(&kind, form, incoming, seen).await,
                Err(response) => response,
            }
        }
        (&Method::POST, ["images", "edits"]) => match read_form(parts, incoming, false).await {
            Ok(form) => image_edit(form, incoming, seen).await,
            Err(response) => response,
        },
        (&Method::POST, ["files"]) => match read_form(parts, incoming, true).await {
            Ok(form) => file_upload(shared, form, seen),
            Err(response) => response,
        },
        (&Method::POST, ["audio", "speech"]) => match read_json(&parts, incoming).await {
            Ok((value, _)) => speech(&value, seen),
            Err(response) => response,
        },
        (&Method::POST, ["images", "generations"]) => match read_json(&parts, incoming).await {
            Ok((value, _)) => image_generation(&value, seen),
            Err(response) => response,
        },
        (&Method::POST, ["chat", "completions"]) => match read_json(&parts, incoming).await {
            Ok((value, raw)) => chat(shared, &value, &raw, seen),
            Err(response) => response,
        },
        (&Method::GET, ["files"]) => list_files(shared, &query),
        (&Method::GET, ["files", id]) => match find_file(shared, id) {
            Some(object) => json_response(StatusCode::OK, &object, &[]),
            None => no_such_file(id),
        },
        (&Method::GET, ["files", id, "content"]) => file_content(shared, id),
        (&Method::DELETE, ["files", id]) => {
            let mut files = lock(&shared.files);
            match files.iter().position(|f| f.id == *id) {
                Some(i) => {
                    files.remove(i);
                    json_response(
                        StatusCode::OK,
                        &json!({"id": id, "object": "file", "deleted": true}),
                        &[],
                    )
                }
                None => no_such_file(id),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            &format!("Unrecognized request URL ({} {path}).", method.as_str()),
            None,
        ),
    }
}

// ---- forms -----------------------------------------------------------------------------

struct FilePart {
    name: String,
    filename: Option<String>,
    bytes: u64,
    sha256: String,
    /// The bytes, when asked to keep them.
    content: Option<Vec<u8>>,
}

impl FilePart {
    fn json(&self) -> Value {
        json!({"filename": self.filename, "bytes": self.bytes, "sha256": self.sha256})
    }
}

#[derive(Default)]
struct Form {
    /// Text fields (no filename), in order.
    fields: Vec<(String, String)>,
    /// File parts, in order.
    files: Vec<FilePart>,
}

impl Form {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn models(&self) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == "model")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn file(&self, names: &[&str]) -> Option<&FilePart> {
        self.files.iter().find(|f| names.contains(&f.name.as_str()))
    }
}

fn bad_form(message: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_multipart",
        &message,
        None,
    )
}

/// Reads a multipart form as it arrives: text fields kept (up to [`MAX_TEXT_FIELD`]),
/// file parts hashed (and kept when `keep_files`).
async fn read_form(
    parts: axum::http::request::Parts,
    incoming: &mut Incoming,
    keep_files: bool,
) -> Result<Form, Response> {
    let request = Request::from_parts(parts, incoming.body());
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad_form(format!("expected a multipart/form-data body: {e}")))?;
    let mut form = Form::default();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(bad_form(format!("could not read the form: {e}"))),
        };
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let mut sha = Sha256::new();
        let mut bytes = 0u64;
        let mut content = Vec::new();
        let keep = keep_files || filename.is_none();
        loop {
            match field.chunk().await {
                Ok(Some(piece)) => {
                    sha.update(&piece);
                    bytes += piece.len() as u64;
                    if keep && (filename.is_some() || content.len() < MAX_TEXT_FIELD) {
                        content.extend_from_slice(&piece);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(bad_form(format!("could not read the form: {e}"))),
            }
        }
        if filename.is_none() {
            form.fields
                .push((name, String::from_utf8_lossy(&content).into_owned()));
        } else {
            form.files.push(FilePart {
                name,
                filename,
                bytes,
                sha256: sha.finish_hex(),
                content: keep_files.then_some(content),
            });
        }
    }
    Ok(form)
}

fn missing(param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "missing_required_parameter",
        &format!("Missing required parameter: '{param}'."),
        Some(param),
    )
}

async fn audio(kind: &str, form: Form, incoming: &mut Incoming, seen: &mut Seen) -> Response {
    let models = form.models();
    seen.model = models.first().map(|m| (*m).to_owned());
    seen.model_fields = models.len();
    let Some(file) = form.file(&["file"]) else {
        return missing("file");
    };
    seen.file = Some((file.bytes, file.sha256.clone()));
    let Some(model) = models.first() else {
        return missing("model");
    };
    // The whole body's hash is known once it has been read to its end.
    let Some(body) = body_so_far(incoming).await else {
        return incomplete();
    };
    let text = format!(
        "Stand-in {} of {} bytes by {model}.",
        if kind == "translations" {
            "translation"
        } else {
            "transcription"
        },
        file.bytes
    );
    let answer = json!({
        "text": text,
        "model": model,
        "model_fields": models.len(),
        "file": file.json(),
        "body": {"bytes": body.0, "sha256": body.1},
    });
    json_response(
        StatusCode::OK,
        &answer,
        &[
            (FILE_SHA256, file.sha256.clone()),
            (FILE_BYTES, file.bytes.to_string()),
            (BODY_SHA256, body.1),
            (BODY_BYTES, body.0.to_string()),
            (MODEL, (*model).to_owned()),
        ],
    )
}

/// Reads the body to its end; its length and hash, unless it was cut short.
async fn body_so_far(incoming: &mut Incoming) -> Option<(u64, String)> {
    let tally = incoming.settle().await;
    tally.complete.then_some((tally.bytes, tally.sha256))
}

fn incomplete() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "incomplete_body",
        "the request body ended before its declared end",
        None,
    )
}

async fn image_edit(form: Form, incoming: &mut Incoming, seen: &mut Seen) -> Response {
    let models = form.models();
    seen.model = models.first().map(|m| (*m).to_owned());
    seen.model_fields = models.len();
    let images: Vec<&FilePart> = form
        .files
        .iter()
        .filter(|f| f.name == "image" || f.name == "image[]")
        .collect();
    let Some(first) = images.first() else {
        return missing("image");
    };
    seen.file = Some((first.bytes, first.sha256.clone()));
    let Some(prompt) = form.field("prompt") else {
        return missing("prompt");
    };
    let Some(body) = body_so_far(incoming).await else {
        return incomplete();
    };
    let answer = json!({
        "created": now(),
        "data": [{"b64_json": base64(&image_bytes(prompt))}],
        "model": seen.model,
        "image": first.json(),
        "images": images.iter().map(|f| f.json()).collect::<Vec<_>>(),
        "body": {"bytes": body.0, "sha256": body.1},
    });
    let mut headers = vec![
        (FILE_SHA256, first.sha256.clone()),
        (FILE_BYTES, first.bytes.to_string()),
        (BODY_SHA256, body.1),
        (BODY_BYTES, body.0.to_string()),
    ];
    if let Some(model) = &seen.model {
        headers.push((MODEL, model.clone()));
    }
    json_response(StatusCode::OK, &answer, &headers)
}

fn file_upload(shared: &Arc<Shared>, mut form: Form, seen: &mut Seen) -> Response {
    let Some(purpose) = form.field("purpose").map(str::to_owned) else {
        return missing("purpose");
    };
    let Some(index) = form.files.iter().position(|f| f.name == "file") else {
        return missing("file");
    };
    let file = form.files.swap_remove(index);
    seen.file = Some((file.bytes, file.sha256.clone()));
    let stored = StoredFile {
        id: shared.id("file"),
        filename: file.filename.clone().unwrap_or_else(|| "file".into()),
        purpose,
        created_at: now(),
        content: Bytes::from(file.content.unwrap_or_default()),
    };
    let object = stored.object();
    lock(&shared.files).push(stored);
    json_response(
        StatusCode::OK,
        &object,
        &[
            (FILE_SHA256, file.sha256),
            (FILE_BYTES, file.bytes.to_string()),
        ],
    )
}

// ---- JSON endpoints --------------------------------------------------------------------

/// Reads a JSON body whole; the value and the raw bytes.
async fn read_json(
    parts: &axum::http::request::Parts,
    incoming: &mut Incoming,
) -> Result<(Value, Vec<u8>), Response> {
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_content_type",
            "the request body must be JSON (Content-Type: application/json)",
            None,
        ));
    }
    let Some(raw) = incoming.bytes(MAX_JSON_BODY).await else {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "the request body is too large",
            None,
        ));
    };
    match serde_json::from_slice::<Value>(&raw) {
        Ok(value) if value.is_object() => Ok((value, raw)),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            &format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
}

fn string<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn speech(value: &Value, seen: &mut Seen) -> Response {
    seen.model = string(value, "model").map(str::to_owned);
    for param in ["model", "input", "voice"] {
        if string(value, param).is_none() {
            return missing(param);
        }
    }
    let input = string(value, "input").unwrap_or_default();
    let content_type = match string(value, "response_format").unwrap_or("mp3") {
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        _ => "audio/mpeg",
    };
    let audio = Bytes::from(speech_audio(input));
    let pieces: Vec<Bytes> = (0..audio.len())
        .step_by(SPEECH_PIECE)
        .map(|start| audio.slice(start..(start + SPEECH_PIECE).min(audio.len())))
        .collect();
    streamed(content_type, pieces)
}

/// An answer sent in `pieces`, one body frame each (chunked: no `Content-Length`).
fn streamed(content_type: &'static str, pieces: Vec<Bytes>) -> Response {
    let stream = futures::stream::iter(pieces).then(|piece| async move {
        // Let each piece go out on its own.
        tokio::task::yield_now().await;
        Ok::<Bytes, Infallible>(piece)
    });
    let mut response = Response::new(Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn image_generation(value: &Value, seen: &mut Seen) -> Response {
    seen.model = string(value, "model").map(str::to_owned);
    let Some(prompt) = string(value, "prompt") else {
        return missing("prompt");
    };
    let n = value.get("n").and_then(Value::as_u64).unwrap_or(1);
    if !(1..=10).contains(&n) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            "n must be between 1 and 10",
            Some("n"),
        );
    }
    let image = base64(&image_bytes(prompt));
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": image, "revised_prompt": prompt}))
        .collect();
    let text_tokens = prompt.split_whitespace().count() as u64;
    let answer = json!({
        "created": now(),
        "data": data,
        "usage": {
            "input_tokens": text_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
            "output_tokens": 272 * n,
            "total_tokens": text_tokens + 272 * n,
        },
    });
    json_response(StatusCode::OK, &answer, &[])
}

/// The content part types of every message, in order (`text` for plain strings).
fn part_types(value: &Value) -> Vec<String> {
    let mut types = Vec::new();
    for message in value
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match message.get("content") {
            Some(Value::String(_)) => types.push("text".to_owned()),
            Some(Value::Array(parts)) => types.extend(
                parts
                    .iter()
                    .filter_map(|p| p.get("type").and_then(Value::as_str))
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    types
}

fn chat(shared: &Arc<Shared>, value: &Value, raw: &[u8], seen: &mut Seen) -> Response {
    seen.model = string(value, "model").map(str::to_owned);
    let Some(model) = seen.model.clone() else {
        return missing("model");
    };
    if !value.get("messages").is_some_and(Value::is_array) {
        return missing("messages");
    }
    if value.get("stream").and_then(Value::as_bool) == Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unsupported_value",
            "this stand-in answers chat completions whole (no stream)",
            Some("stream"),
        );
    }
    let sha = sha256_hex(raw);
    let content = format!(
        "Stand-in received {} bytes (sha256 {sha}); parts: {}",
        raw.len(),
        part_types(value).join(", ")
    );
    let prompt_tokens = (raw.len() as u64).div_ceil(4);
    let completion_tokens = content.split_whitespace().count() as u64;
    let answer = json!({
        "id": shared.id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    });
    json_response(
        StatusCode::OK,
        &answer,
        &[(BODY_SHA256, sha), (BODY_BYTES, raw.len().to_string())],
    )
}

// ---- files -----------------------------------------------------------------------------

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn list_files(shared: &Arc<Shared>, query: &str) -> Response {
    let purpose = query_param(query, "purpose");
    let files = lock(&shared.files);
    let mut data: Vec<Value> = files
        .iter()
        .filter(|f| purpose.is_none_or(|p| f.purpose == p))
        .map(StoredFile::object)
        .collect();
    // Newest first unless asked otherwise, as OpenAI does.
    if query_param(query, "order") != Some("asc") {
        data.reverse();
    }
    let first_id = data.first().map(|f| f["id"].clone());
    let last_id = data.last().map(|f| f["id"].clone());
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "first_id": first_id, "last_id": last_id, "has_more": false}),
        &[],
    )
}

fn find_file(shared: &Arc<Shared>, id: &str) -> Option<Value> {
    lock(&shared.files)
        .iter()
        .find(|f| f.id == id)
        .map(StoredFile::object)
}

fn file_content(shared: &Arc<Shared>, id: &str) -> Response {
    let content = lock(&shared.files)
        .iter()
        .find(|f| f.id == id)
        .map(|f| f.content.clone());
    let Some(content) = content else {
        return no_such_file(id);
    };
    let pieces: Vec<Bytes> = (0..content.len())
        .step_by(CONTENT_PIECE)
        .map(|start| content.slice(start..(start + CONTENT_PIECE).min(content.len())))
        .collect();
    streamed("application/octet-stream", pieces)
}

fn no_such_file(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "file_not_found",
        &format!("No such File object: {id}"),
        Some("id"),
    )
}

// ---- answers ---------------------------------------------------------------------------

fn json_response(status: StatusCode, value: &Value, headers: &[(&str, String)]) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// An OpenAI-shaped error answer.
fn error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    json_response(status, &body, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_content() {
        assert_eq!(speech_audio("hello"), speech_audio("hello"));
        assert_eq!(speech_audio("hello").len(), 5 * SPEECH_BYTES_PER_CHAR);
        assert_ne!(speech_audio("hello"), speech_audio("hellp"));
        assert!(image_bytes("a cat").starts_with(PNG_SIGNATURE));
        assert_eq!(pseudo_random_bytes(1, 13).len(), 13);
    }

    #[test]
    fn generated_form_pieces_add_up() {
        let form = GeneratedForm::new("whisper-1", 100_003, 9, 4096);
        let body: Vec<u8> = form.pieces().flat_map(|p| p.to_vec()).collect();
        assert_eq!(body.len() as u64, form.len());
        let digest = form.digest();
        assert_eq!(digest.body_sha256, sha256_hex(&body));
        assert_eq!(digest.body_bytes, form.len());
        let head = form.head().len();
        let file = &body[head..head + 100_003];
        assert_eq!(digest.file_sha256, sha256_hex(file));
        assert!(
            String::from_utf8_lossy(&body[..head]).contains("name=\"model\"\r\n\r\nwhisper-1\r\n")
        );
    }
}
