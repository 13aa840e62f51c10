//! What each LLM provider needs on the wire, in one place: the catalog (name, default
//! base URL, credential scheme, API flavour, what it supports) and the pure routing of a
//! client's request to a provider — which upstream path, which credential header, and
//! whether the body passes as it is or is translated. The gateway asks this crate and
//! knows no provider itself; adding a provider is one entry here (and, for a new API
//! flavour, one translation module in `sg-translate`) plus its request-shape test.
#![forbid(unsafe_code)]

use serde::Serialize;
pub use sg_events::Provider;

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// OpenAI's API under the base URL (`<base>/chat/completions`, …).
    Openai,
    /// Anthropic's Messages API under the API root (`<root>/v1/messages`); OpenAI chat
    /// requests are translated.
    Anthropic,
    /// Azure OpenAI: `<endpoint>/openai/deployments/<model>/<operation>?api-version=…`, or
    /// the v1 API when the base URL ends in `/openai/v1`.
    AzureOpenai,
}

/// How the provider key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Openai => "openai",
            Flavour::Anthropic => "anthropic",
            Flavour::AzureOpenai => "azure_openai",
        }
    }
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Bearer => "bearer",
            Auth::XApiKey => "x_api_key",
            Auth::ApiKey => "api_key",
        }
    }

    /// The header name and the prefix of its value.
    pub fn header(self) -> (&'static str, &'static str) {
        match self {
            Auth::Bearer => ("authorization", "Bearer "),
            Auth::XApiKey => ("x-api-key", ""),
            Auth::ApiKey => ("api-key", ""),
        }
    }
}

/// What a provider serves through SecureGate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Supports {
    pub chat: bool,
    pub streaming: bool,
    pub embeddings: bool,
    pub audio: bool,
    pub images: bool,
    pub files: bool,
}

/// One provider of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    /// The name connections use (`"provider": "…"`).
    pub id: &'static str,
    /// For people.
    pub name: &'static str,
    /// `None`: a connection must give `base_url`.
    pub default_base_url: Option<&'static str>,
    pub auth: Auth,
    pub flavour: Flavour,
    pub supports: Supports,
}

const ALL_OPENAI: Supports = Supports {
    chat: true,
    streaming: true,
    embeddings: true,
    audio: true,
    images: true,
    files: true,
};

const fn supports(embeddings: bool, audio: bool, images: bool) -> Supports {
    Supports {
        chat: true,
        streaming: true,
        embeddings,
        audio,
        images,
        files: false,
    }
}

/// The catalog entry of `provider`.
pub fn info(provider: Provider) -> ProviderInfo {
    let (name, auth, flavour, supports) = match provider {
        Provider::Openai => ("OpenAI", Auth::Bearer, Flavour::Openai, ALL_OPENAI),
        Provider::Anthropic => (
            "Anthropic",
            Auth::XApiKey,
            Flavour::Anthropic,
            supports(false, false, false),
        ),
        Provider::AzureOpenai => (
            "Azure OpenAI",
            Auth::ApiKey,
            Flavour::AzureOpenai,
            ALL_OPENAI,
        ),
        Provider::Gemini => (
            "Google Gemini",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, true),
        ),
        Provider::Mistral => (
            "Mistral",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, false),
        ),
        Provider::Groq => (
            "Groq",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, true, false),
        ),
        Provider::Together => (
            "Together AI",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, true),
        ),
        Provider::Fireworks => (
            "Fireworks AI",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, false),
        ),
        Provider::Deepseek => (
            "DeepSeek",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, false, false),
        ),
        Provider::Xai => (
            "xAI",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, false, true),
        ),
        Provider::Perplexity => (
            "Perplexity",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, false, false),
        ),
        Provider::Openrouter => (
            "OpenRouter",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, false, false),
        ),
        Provider::Cohere => (
            "Cohere",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, false),
        ),
        Provider::Cerebras => (
            "Cerebras",
            Auth::Bearer,
            Flavour::Openai,
            supports(false, false, false),
        ),
        Provider::OpenaiCompatible => (
            "Self-hosted OpenAI-compatible (vLLM, Ollama, …)",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, true, true),
        ),
        Provider::Mock => (
            "Built-in mock",
            Auth::Bearer,
            Flavour::Openai,
            supports(true, false, false),
        ),
    };
    ProviderInfo {
        id: provider.as_str(),
        name,
        default_base_url: provider.default_base_url(),
        auth,
        flavour,
        supports,
    }
}

/// Every provider a connection can name.
pub fn catalog() -> impl Iterator<Item = ProviderInfo> {
    Provider::ALL.into_iter().map(info)
}

/// The `api-version` Azure OpenAI deployments are called with unless the connection
/// sets another.
pub const AZURE_API_VERSION: &str = "2024-10-21";
/// The `anthropic-version` sent when the client sends none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How a request is carried to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The body passes as it is; the answer is read for usage in this format.
    Passthrough(UsageFormat),
    /// An OpenAI chat request sent as an Anthropic Messages request; the answer is
    /// translated back.
    ChatViaMessages,
}

/// Where usage is in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    /// `usage` in the JSON answer, or in the last chunk of a stream.
    Openai,
    /// Anthropic's: `usage` in a message; in a stream, `message_start` and
    /// `message_delta`.
    Anthropic,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The upstream path and query, to append to the connection's base URL's path.
    pub suffix: String,
    pub mode: Mode,
}

/// A request this connection's provider cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub code: &'static str,
    pub message: String,
}

fn unsupported(code: &'static str, message: impl Into<String>) -> Unsupported {
    Unsupported {
        code,
        message: message.into(),
    }
}

/// Plans a client request: `method`, `path` (the client's path after `/v1`, e.g.
/// `/chat/completions`), `query` (without `?`, may be empty), `model` (as read from
/// the body, after routing), `base_path` (the connection's base URL path) and
/// `api_version` (Azure; `None` for the default).
pub fn plan(
    provider: Provider,
    method: &str,
    path: &str,
    query: &str,
    model: Option<&str>,
    base_path: &str,
    api_version: Option<&str>,
) -> Result<Plan, Unsupported> {
    let with_query = |p: String| {
        if query.is_empty() {
            p
        } else {
            format!("{p}?{query}")
        }
    };
    let anthropic_path = path == "/messages" || path.starts_with("/messages/");
    match info(provider).flavour {
        Flavour::Openai => {
            if anthropic_path {
                return Err(unsupported(
                    "unsupported_endpoint",
                    format!(
                        "/v1{path} is Anthropic's Messages API; this connection's provider ({}) speaks the OpenAI API — use /v1/chat/completions, or a connection to Anthropic",
                        info(provider).name
                    ),
                ));
            }
            Ok(Plan {
                suffix: with_query(path.to_owned()),
                mode: Mode::Passthrough(UsageFormat::Openai),
            })
        }
        Flavour::Anthropic => {
            if anthropic_path || path == "/models" || path.starts_with("/models/") {
                Ok(Plan {
                    suffix: with_query(format!("/v1{path}")),
                    mode: Mode::Passthrough(UsageFormat::Anthropic),
                })
            } else if path == "/chat/completions" && method == "POST" {
                Ok(Plan {
                    suffix: "/v1/messages".to_owned(),
                    mode: Mode::ChatViaMessages,
                })
            } else {
                Err(unsupported(
                    "unsupported_endpoint",
                    format!(
                        "Anthropic serves /v1/messages (and OpenAI-style /v1/chat/completions through SecureGate), not /v1{path}"
                    ),
                ))
            }
        }
        Flavour::AzureOpenai => {
            if anthropic_path {
                return Err(unsupported(
                    "unsupported_endpoint",
                    format!(
                        "/v1{path} is Anthropic's Messages API; Azure OpenAI speaks the OpenAI API"
                    ),
                ));
            }
            if base_path.trim_end_matches('/').ends_with("/openai/v1") {
                // The v1 API: OpenAI's paths, the model in the body.
                return Ok(Plan {
                    suffix: with_query(path.to_owned()),
                    mode: Mode::Passthrough(UsageFormat::Openai),
                });
            }
            let version = api_version.unwrap_or(AZURE_API_VERSION);
            let mut q = format!("api-version={version}");
            if !query.is_empty() {
                q = format!("{query}&{q}");
            }
            // Operations on a deployment name it in the path; the rest are resource-wide.
            let per_deployment = matches!(
                path,
                "/chat/completions"
                    | "/completions"
                    | "/embeddings"
                    | "/audio/transcriptions"
                    | "/audio/translations"
                    | "/audio/speech"
                    | "/images/generations"
                    | "/images/edits"
            );
            let suffix = if per_deployment {
                let model = model.ok_or_else(|| {
                    unsupported(
                        "model_required",
                        "Azure OpenAI needs the deployment name as `model`",
                    )
                })?;
                if model.is_empty()
                    || !model
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    || model.starts_with('.')
                {
                    return Err(unsupported(
                        "invalid_model",
                        "an Azure OpenAI deployment name has letters, digits, '-', '_' and '.' only",
                    ));
                }
                format!("/openai/deployments/{model}{path}")
            } else {
                format!("/openai{path}")
            };
            Ok(Plan {
                suffix: format!("{suffix}?{q}"),
                mode: Mode::Passthrough(UsageFormat::Openai),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(provider: Provider, path: &str, model: Option<&str>, base: &str) -> Plan {
        plan(provider, "POST", path, "", model, base, None).unwrap_or_else(|e| {
            unreachable!("{provider:?} {path}: {}", e.message);
        })
    }

    #[test]
    fn the_catalog_has_fifteen_providers_and_the_mock() {
        let all: Vec<ProviderInfo> = catalog().collect();
        assert_eq!(all.len(), 16);
        for i in &all {
            assert_eq!(i.id.parse::<Provider>().map(|p| p.as_str()), Ok(i.id));
            if let Some(base) = i.default_base_url {
                assert!(base.starts_with("https://"), "{}", i.id);
                assert!(!base.ends_with('/'), "{}", i.id);
            }
        }
        assert!(
            all.iter()
                .filter(|i| i.default_base_url.is_none())
                .all(|i| matches!(i.id, "azure_openai" | "openai_compatible" | "mock"))
        );
    }

    #[test]
    fn openai_compatible_paths_pass_under_the_base() {
        let groq = p(
            Provider::Groq,
            "/chat/completions",
            Some("llama"),
            "/openai/v1",
        );
        assert_eq!(groq.suffix, "/chat/completions");
        assert_eq!(groq.mode, Mode::Passthrough(UsageFormat::Openai));
        let q = plan_q(Provider::Openai, "GET", "/files", "limit=2");
        assert_eq!(q.suffix, "/files?limit=2");
        assert!(
            plan(Provider::Openai, "POST", "/messages", "", None, "/v1", None).is_err(),
            "Messages needs an Anthropic connection"
        );
    }

    fn plan_q(provider: Provider, method: &str, path: &str, query: &str) -> Plan {
        plan(provider, method, path, query, None, "/v1", None).unwrap_or_else(|e| {
            unreachable!("{}", e.message);
        })
    }

    #[test]
    fn anthropic_is_native_or_translated() {
        let native = p(Provider::Anthropic, "/messages", Some("claude"), "");
        assert_eq!(native.suffix, "/v1/messages");
        assert_eq!(native.mode, Mode::Passthrough(UsageFormat::Anthropic));
        let count = p(Provider::Anthropic, "/messages/count_tokens", None, "");
        assert_eq!(count.suffix, "/v1/messages/count_tokens");
        let chat = p(Provider::Anthropic, "/chat/completions", Some("claude"), "");
        assert_eq!(
            (chat.suffix.as_str(), chat.mode),
            ("/v1/messages", Mode::ChatViaMessages)
        );
        let e = plan(
            Provider::Anthropic,
            "POST",
            "/embeddings",
            "",
            None,
            "",
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, "unsupported_endpoint");
    }

    #[test]
    fn azure_deployments_and_versions() {
        let chat = p(
            Provider::AzureOpenai,
            "/chat/completions",
            Some("gpt4o-prod"),
            "",
        );
        assert_eq!(
            chat.suffix,
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        let custom = plan(
            Provider::AzureOpenai,
            "POST",
            "/embeddings",
            "",
            Some("emb"),
            "/",
            Some("2025-01-01-preview"),
        )
        .unwrap_or_else(|e| unreachable!("{}", e.message));
        assert_eq!(
            custom.suffix,
            "/openai/deployments/emb/embeddings?api-version=2025-01-01-preview"
        );
        let files = plan(
            Provider::AzureOpenai,
            "GET",
            "/files",
            "limit=1",
            None,
            "",
            None,
        )
        .unwrap_or_else(|e| unreachable!("{}", e.message));
        assert_eq!(files.suffix, "/openai/files?limit=1&api-version=2024-10-21");
        let v1 = p(
            Provider::AzureOpenai,
            "/chat/completions",
            Some("x"),
            "/openai/v1/",
        );
        assert_eq!(v1.suffix, "/chat/completions");
        for bad in [None, Some(""), Some("../x"), Some("a/b"), Some("a?b")] {
            assert!(
                plan(
                    Provider::AzureOpenai,
                    "POST",
                    "/chat/completions",
                    "",
                    bad,
                    "",
                    None
                )
                .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credentials_travel_as_each_provider_expects() {
        assert_eq!(
            info(Provider::Openai).auth.header(),
            ("authorization", "Bearer ")
        );
        assert_eq!(info(Provider::Anthropic).auth.header(), ("x-api-key", ""));
        assert_eq!(info(Provider::AzureOpenai).auth.header(), ("api-key", ""));
    }
}
