//! Reading a client's request body: bounded in size and in time.
//!
//! A body must keep coming: no more than [`BodyTimeouts::timeout`] may pass between two
//! pieces, and the whole body must arrive before `timeout + received / min_rate` — each
//! byte received earns the sender `1 / min_rate` seconds — so a client that drips a byte
//! now and then is cut off quickly while a slow but honest upload of any size finishes.
//! A declared `Content-Length` over the limit is refused before anything is read.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use sg_api_error::{ApiError, ErrorType};
use tokio::time::Instant;

/// How long a body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest wait for the next piece, and the time every body gets before the rate
    /// counts.
    pub timeout: Duration,
    /// Bytes per second a body must average beyond `timeout`; 0 turns the rate off.
    pub min_rate: u64,
}

impl Default for BodyTimeouts {
    fn default() -> Self {
        BodyTimeouts {
            timeout: Duration::from_secs(15),
            min_rate: 32 * 1024,
        }
    }
}

fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorType::InvalidRequest,
        "body_timeout",
        "the request body arrived too slowly; send it again",
    )
}

/// The declared length, if any.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether the request has a body at all (without reading it).
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    declared_length(headers).is_some_and(|n| n > 0)
        || headers.contains_key(header::TRANSFER_ENCODING)
}

/// A client body read piece by piece within its size and time limits.
pub(crate) struct BodyReader {
    body: Body,
    limit: u64,
    timeouts: BodyTimeouts,
    start: Instant,
    received: u64,
}

impl BodyReader {
    /// Refuses a declared `Content-Length` over `limit` at once.
    pub(crate) fn new(
        body: Body,
        headers: &HeaderMap,
        limit: u64,
        timeouts: BodyTimeouts,
    ) -> Result<BodyReader, ApiError> {
        if declared_length(headers).is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(
                usize::try_from(limit).unwrap_or(usize::MAX),
            ));
        }
        Ok(BodyReader {
            body,
            limit,
            timeouts,
            start: Instant::now(),
            received: 0,
        })
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// The next piece, `None` at the end; 413 over the limit, 408 too slow.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            let earned = if self.timeouts.min_rate == 0 {
                Duration::MAX
            } else {
                Duration::from_secs_f64(self.received as f64 / self.timeouts.min_rate as f64)
            };
            let deadline = self
                .start
                .checked_add(self.timeouts.timeout.saturating_add(earned))
                .unwrap_or_else(|| self.start + Duration::from_secs(86_400 * 365));
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(self.timeouts.timeout);
            let frame = match tokio::time::timeout(wait, self.body.frame()).await {
                Err(_) => return Err(too_slow()),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(
                        "body_read_failed",
                        format!("could not read the request body: {e}"),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.received += data.len() as u64;
                if self.received > self.limit {
                    return Err(ApiError::payload_too_large(
                        usize::try_from(self.limit).unwrap_or(usize::MAX),
                    ));
                }
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Reads the whole body, refusing one over `limit` bytes (413) or too slow (408).
pub(crate) async fn read(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeouts: BodyTimeouts,
) -> Result<Bytes, ApiError> {
    let mut reader = BodyReader::new(body, headers, limit as u64, timeouts)?;
    let mut buf = BytesMut::new();
    while let Some(data) = reader.next().await? {
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_body(pieces: Vec<(u64, &'static [u8])>) -> Body {
        let stream = futures::stream::unfold(pieces.into_iter(), |mut it| async move {
            let (delay_ms, bytes) = it.next()?;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(bytes)), it))
        });
        Body::from_stream(stream)
    }

    const SHORT: BodyTimeouts = BodyTimeouts {
        timeout: Duration::from_millis(200),
        min_rate: 1000,
    };

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_is_read() {
        let pieces = (0..20).map(|_| (100, &[b'x'; 200][..])).collect();
        let body = read(slow_body(pieces), &HeaderMap::new(), 1 << 20, SHORT)
            .await
            .unwrap();
        assert_eq!(body.len(), 4000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_is_refused() {
        let body = slow_body(vec![(0, b"abc"), (300, b"def")]);
        let e = read(body, &HeaderMap::new(), 1 << 20, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drip_is_refused() {
        // A byte every 150 ms never trips the gap, but earns only 1 ms each.
        let pieces = (0..100).map(|_| (150, &b"x"[..])).collect();
        let e = read(slow_body(pieces), &HeaderMap::new(), 1 << 20, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e.code, "body_timeout");
    }

    #[tokio::test]
    async fn declared_and_actual_sizes_are_bounded() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        let e = read(Body::from("hello world"), &headers, 10, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = read(Body::from("hello world"), &HeaderMap::new(), 10, SHORT)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
