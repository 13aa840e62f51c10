//! `securegate env`: the code that points an OpenAI client at the gateway. Pure.
//!
//! Never holds a real proxy key: the key is read from the environment at run time
//! (`SECUREGATE_KEY`, or `OPENAI_API_KEY` in a dotenv file), and the snippet says to paste
//! the key `securegate keys create` printed.

use clap::ValueEnum;
use serde::Serialize;

/// Which snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// The official `openai` Python package.
    Python,
    /// The official `openai` npm package.
    Node,
    /// A curl command.
    Curl,
    /// A `.env` file (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, …).
    Dotenv,
}

/// What goes in a snippet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The OpenAI base URL: the gateway's URL + `/v1`.
    pub base_url: String,
    /// This machine's `x-device-fingerprint`.
    pub device_fingerprint: String,
    /// The `x-connection-id` to send, if one was asked for.
    pub connection_id: Option<String>,
}

/// `<gateway_url>/v1`.
pub fn base_url(gateway_url: &str) -> String {
    format!("{}/v1", gateway_url.trim().trim_end_matches('/'))
}

const PASTE: &str = "paste the key `securegate keys create` printed (SG_…; shown only once)";

/// A string literal in Python or JavaScript (JSON's escapes are valid in both).
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A single-quoted shell word.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A dotenv value: bare when plain, else double-quoted.
fn env_value(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@%+=,".contains(&b))
    {
        s.to_owned()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
        )
    }
}

fn headers(s: &Settings) -> Vec<(&'static str, &str)> {
    let mut h = Vec::new();
    if let Some(c) = &s.connection_id {
        h.push(("x-connection-id", c.as_str()));
    }
    h.push(("x-device-fingerprint", s.device_fingerprint.as_str()));
    h
}

/// The snippet.
pub fn render(lang: Lang, s: &Settings) -> String {
    match lang {
        Lang::Python => {
            let mut out = String::new();
            out.push_str(&format!("# export SECUREGATE_KEY=\"SG_…\"   # {PASTE}\n"));
            out.push_str("import os\n\nfrom openai import OpenAI\n\n");
            out.push_str("client = OpenAI(\n");
            out.push_str(&format!("    base_url={},\n", lit(&s.base_url)));
            out.push_str("    api_key=os.environ[\"SECUREGATE_KEY\"],\n");
            out.push_str("    default_headers={\n");
            for (k, v) in headers(s) {
                out.push_str(&format!("        {}: {},\n", lit(k), lit(v)));
            }
            out.push_str("    },\n)\n");
            out
        }
        Lang::Node => {
            let mut out = String::new();
            out.push_str(&format!("// export SECUREGATE_KEY=\"SG_…\"   // {PASTE}\n"));
            out.push_str("import OpenAI from \"openai\";\n\n");
            out.push_str("const client = new OpenAI({\n");
            out.push_str(&format!("  baseURL: {},\n", lit(&s.base_url)));
            out.push_str("  apiKey: process.env.SECUREGATE_KEY,\n");
            out.push_str("  defaultHeaders: {\n");
            for (k, v) in headers(s) {
                out.push_str(&format!("    {}: {},\n", lit(k), lit(v)));
            }
            out.push_str("  },\n});\n");
            out
        }
        Lang::Curl => {
            let mut out = String::new();
            out.push_str(&format!("export SECUREGATE_KEY=\"SG_…\"   # {PASTE}\n"));
            out.push_str(&format!(
                "curl -sS {} \\\n",
                sh(&format!("{}/chat/completions", s.base_url))
            ));
            out.push_str("  -H \"Authorization: Bearer $SECUREGATE_KEY\" \\\n");
            for (k, v) in headers(s) {
                out.push_str(&format!("  -H {} \\\n", sh(&format!("{k}: {v}"))));
            }
            out.push_str("  -H 'Content-Type: application/json' \\\n");
            out.push_str(
                "  -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'\n",
            );
            out
        }
        Lang::Dotenv => {
            let mut out = String::new();
            out.push_str(&format!("OPENAI_BASE_URL={}\n", env_value(&s.base_url)));
            out.push_str(&format!("# OPENAI_API_KEY: {PASTE}\n"));
            out.push_str("OPENAI_API_KEY=\n");
            out.push_str(&format!(
                "SECUREGATE_DEVICE_FINGERPRINT={}\n",
                env_value(&s.device_fingerprint)
            ));
            if let Some(c) = &s.connection_id {
                out.push_str(&format!("SECUREGATE_CONNECTION_ID={}\n", env_value(c)));
            }
            out.push_str(
                "# Send SECUREGATE_DEVICE_FINGERPRINT as the x-device-fingerprint header (and\n\
                 # SECUREGATE_CONNECTION_ID, if set, as x-connection-id) with every request.\n",
            );
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(connection: bool) -> Settings {
        Settings {
            base_url: base_url("http://127.0.0.1:8080/"),
            device_fingerprint: "sgd_0123456789abcdef0123456789abcdef".into(),
            connection_id: connection.then(|| "mock_abc".into()),
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            base_url("https://llm.example.com/"),
            "https://llm.example.com/v1"
        );
    }

    #[test]
    fn python() {
        let s = render(Lang::Python, &settings(true));
        assert_eq!(
            s,
            "# export SECUREGATE_KEY=\"SG_…\"   # paste the key `securegate keys create` printed (SG_…; shown only once)\n\
             import os\n\nfrom openai import OpenAI\n\n\
             client = OpenAI(\n    base_url=\"http://127.0.0.1:8080/v1\",\n    api_key=os.environ[\"SECUREGATE_KEY\"],\n    default_headers={\n        \"x-connection-id\": \"mock_abc\",\n        \"x-device-fingerprint\": \"sgd_0123456789abcdef0123456789abcdef\",\n    },\n)\n"
        );
    }

    #[test]
    fn node_without_a_connection() {
        let s = render(Lang::Node, &settings(false));
        assert!(s.contains("import OpenAI from \"openai\";"), "{s}");
        assert!(
            s.contains("  baseURL: \"http://127.0.0.1:8080/v1\",\n"),
            "{s}"
        );
        assert!(s.contains("  apiKey: process.env.SECUREGATE_KEY,\n"), "{s}");
        assert!(s.contains("\"x-device-fingerprint\": \"sgd_"), "{s}");
        assert!(!s.contains("x-connection-id"), "{s}");
    }

    #[test]
    fn curl_quotes_for_the_shell() {
        let s = render(Lang::Curl, &settings(true));
        assert!(
            s.contains("curl -sS 'http://127.0.0.1:8080/v1/chat/completions' \\\n"),
            "{s}"
        );
        assert!(
            s.contains("-H \"Authorization: Bearer $SECUREGATE_KEY\""),
            "{s}"
        );
        assert!(s.contains("-H 'x-connection-id: mock_abc' \\\n"), "{s}");
        assert!(
            s.contains("-H 'x-device-fingerprint: sgd_0123456789abcdef0123456789abcdef' \\\n"),
            "{s}"
        );
        assert_eq!(sh("a'b"), r"'a'\''b'");
    }

    #[test]
    fn dotenv() {
        let s = render(Lang::Dotenv, &settings(true));
        let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "OPENAI_BASE_URL=http://127.0.0.1:8080/v1",
                "OPENAI_API_KEY=",
                "SECUREGATE_DEVICE_FINGERPRINT=sgd_0123456789abcdef0123456789abcdef",
                "SECUREGATE_CONNECTION_ID=mock_abc",
            ]
        );
        assert_eq!(env_value("a b$"), "\"a b\\$\"");
    }

    #[test]
    fn no_snippet_holds_a_key() {
        for lang in [Lang::Python, Lang::Node, Lang::Curl, Lang::Dotenv] {
            let s = render(lang, &settings(true));
            // Only the placeholder: `SG_` is always followed by the ellipsis.
            for (i, _) in s.match_indices("SG_") {
                assert!(s[i + 3..].starts_with('…'), "{lang:?}: {s}");
            }
        }
    }

    #[test]
    fn hostile_values_stay_inside_their_literals() {
        let s = Settings {
            base_url: "http://x/\"); import evil #/v1".into(),
            device_fingerprint: "sgd_1".into(),
            connection_id: None,
        };
        let py = render(Lang::Python, &s);
        assert!(
            py.contains(r#"base_url="http://x/\"); import evil #/v1","#),
            "{py}"
        );
    }
}
