//! The one place that turns an error into an HTTP status and the OpenAI error shape
//! `{"error": {"message", "type", "code", "param"}}`, for the gateway and the admin API.
//!
//! SDKs read `type` and `code`; people read `message`, which says what to do.
//! Beside it, what the HTTP APIs read from a request the same way everywhere: JSON
//! bodies ([`ApiJson`]) and quality-valued list headers ([`header_offers`]).
#![forbid(unsafe_code)]

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The OpenAI error `type`s SecureGate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    Conflict,
    RateLimit,
    /// A budget is spent (OpenAI's type for an exhausted quota).
    InsufficientQuota,
    /// The upstream provider failed or could not be reached.
    Upstream,
    /// Our own fault or a backend of ours being unavailable.
    Server,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::Permission => "permission_error",
            ErrorType::NotFound => "not_found_error",
            ErrorType::Conflict => "conflict_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::InsufficientQuota => "insufficient_quota",
            ErrorType::Upstream => "upstream_error",
            ErrorType::Server => "server_error",
        }
    }
}

/// The `code` of an error answer, kept in the response's extensions for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: ErrorType,
    pub code: &'static str,
    pub message: String,
    pub param: Option<std::borrow::Cow<'static, str>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        error_type: ErrorType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            error_type,
            code,
            message: message.into(),
            param: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequest,
            code,
            message,
        )
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::Authentication,
            code,
            message,
        )
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorType::Permission, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorType::NotFound, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorType::Conflict, code, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::InvalidRequest,
            "request_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorType::Upstream, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Server,
            code,
            message,
        )
        .with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Server,
            "internal_error",
            message,
        )
    }

    pub fn with_param(mut self, param: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.error_type.as_str(),
                "code": self.code,
                "param": self.param,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// Maps axum's JSON rejections to clear errors: 400 for malformed JSON or a wrong
/// shape, 413 for a body over the limit, 415 for a missing JSON content type.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::bad_request(
            "invalid_body",
            format!("the request body has the wrong shape: {}", e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InvalidRequest,
            "unsupported_media_type",
            "send the request body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorType::InvalidRequest,
                "request_too_large",
                "the request body is too large",
            )
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// A body of the wrong shape: 400 `invalid_body`, whose `param` names the member at
/// fault (`ip.cidrs[0]`) when it is not the body as a whole, so that a form can show
/// the message next to the field.
fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let error = ApiError::bad_request(
        "invalid_body",
        format!("the request body has the wrong shape: {}", e.inner()),
    );
    if path == "." || path.is_empty() {
        error
    } else {
        error.with_param(path)
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s. The body must be a JSON object: serde
/// reads a struct from an array too (`[]` would be a struct of defaults), and no request
/// body of this API is anything but an object.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the request body has the wrong shape: it must be a JSON object",
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(shape_error)
    }
}

/// Whether a list header with quality values (`Accept`, `Accept-Encoding`) takes
/// `token` (compared without case or parameters): the entry naming it decides by its
/// quality (`q=0` refuses); without one, a `*` entry does when `wildcard` is allowed.
/// Every occurrence of the header counts; a value that is not text is ignored.
pub fn header_offers(
    headers: &axum::http::HeaderMap,
    name: HeaderName,
    token: &str,
    wildcard: bool,
) -> bool {
    let mut named = None;
    let mut any = None;
    let entries = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for entry in entries {
        let mut parts = entry.split(';').map(str::trim);
        let entry_token = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, q)| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        let taken = !refused;
        if entry_token.eq_ignore_ascii_case(token) {
            // Refused anywhere, refused: the most specific word is the client's.
            named = Some(named.unwrap_or(true) && taken);
        } else if wildcard && entry_token == "*" {
            any = Some(any.unwrap_or(true) && taken);
        }
    }
    named.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_offers_reads_every_entry_and_its_quality() {
        use axum::http::{HeaderMap, header};
        let offers = |values: &[&str], token: &str, wildcard: bool| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            header_offers(&h, header::ACCEPT, token, wildcard)
        };
        assert!(offers(&["text/csv"], "text/csv", false));
        assert!(offers(
            &["application/json;q=0.5, Text/CSV; charset=utf-8"],
            "text/csv",
            false
        ));
        assert!(offers(
            &["application/json", "text/csv;q=0.1"],
            "text/csv",
            false
        ));
        assert!(!offers(&["text/csv;q=0"], "text/csv", false));
        assert!(!offers(
            &["text/csv; Q=0.0, application/json"],
            "text/csv",
            false
        ));
        assert!(!offers(&["application/json"], "text/csv", false));
        assert!(!offers(&[], "text/csv", false));
        // The wildcard, where allowed, unless the token itself is refused.
        assert!(offers(&["br, *"], "gzip", true));
        assert!(!offers(&["br, *"], "gzip", false));
        assert!(!offers(&["gzip;q=0, *"], "gzip", true));
        assert!(offers(&["*;q=0, gzip"], "gzip", true));
        assert!(!offers(&["*;q=0"], "gzip", true));
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_shape_names_the_member_at_fault() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            cidrs: Vec<std::net::IpAddr>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            name: String,
            ip: Option<Inner>,
        }
        async fn parse(body: &str) -> ApiError {
            let request = axum::http::Request::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap();
            ApiJson::<Body>::from_request(request, &())
                .await
                .unwrap_err()
        }
        let e = parse(r#"{"name":"k","ip":{"cidrs":["10.0.0.1","nope"]}}"#).await;
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_body", Some("ip.cidrs[1]"))
        );
        let e = parse(r#"{"name":7}"#).await;
        assert_eq!(e.param.as_deref(), Some("name"));
        // The body as a whole: no member to name.
        let e = parse(r#"{"ip":null}"#).await;
        assert_eq!(
            (e.code, e.param.as_deref()),
            ("invalid_body", None),
            "{}",
            e.message
        );
        let e = parse(r#"{"name":"k","other":1}"#).await;
        assert!(e.message.contains("other"), "{}", e.message);
    }

    #[test]
    fn body_has_the_openai_shape() {
        let e = ApiError::unauthorized("invalid_api_key", "no such key");
        let body = e.body();
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["message"], "no such key");
        assert!(body["error"]["param"].is_null());
    }

    #[tokio::test]
    async fn a_body_must_be_a_json_object() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default)]
        struct Settings {
            #[allow(dead_code)]
            n: u8,
        }
        async fn read(body: &str) -> Result<ApiJson<Settings>, ApiError> {
            let req = Request::builder()
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap_or_default();
            ApiJson::<Settings>::from_request(req, &()).await
        }
        assert!(read("{}").await.is_ok());
        assert!(read(r#"{"n": 3}"#).await.is_ok());
        for bad in [
            "[]",
            "[1]",
            "null",
            "3",
            "\"x\"",
            r#"{"n": -1}"#,
            r#"{"n": 300}"#,
            "{",
        ] {
            let e = read(bad).await.err().map(|e| e.body());
            assert_eq!(
                e.as_ref().map(|b| b["error"]["code"].clone()),
                Some(
                    if bad == "{" {
                        "invalid_json"
                    } else {
                        "invalid_body"
                    }
                    .into()
                ),
                "{bad}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn response_carries_status_and_headers() {
        let r = ApiError::unavailable("log_unavailable", "try again").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
