//! JSON request bodies: the top-level object is read once into its members, each kept
//! as the exact bytes the client sent ([`RawValue`]), so that nothing below the top
//! level is built into a document — a chat history of any size or depth costs one
//! linear scan. The members the gateway needs (`model`, `stream`, `stream_options`)
//! are read from there, and a rewrite (a routed model, an added usage request) writes
//! the members back around the untouched raw values.
//!
//! Strictness is the point: a member given twice at the top level, a value of the wrong
//! type, invalid UTF-8 or anything else that is not JSON is an error, because real
//! servers resolve such bodies in ways that differ (the last duplicate usually wins) and
//! the gateway's decision must be made on exactly what the provider reads.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::InspectError;

/// Most top-level members accepted (a chat request has a few dozen at most).
pub const MAX_MEMBERS: usize = 512;

/// A JSON object body, read at its top level.
#[derive(Debug)]
pub struct JsonObject<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// A member name, borrowed when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Why a member list cannot be accepted, found while reading it.
enum Refusal {
    Duplicate(String),
    TooMany,
}

struct Members<'a, 'r> {
    refusal: &'r mut Option<Refusal>,
    _marker: std::marker::PhantomData<&'a ()>,
}

impl<'de> Visitor<'de> for Members<'de, '_> {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if members.len() >= MAX_MEMBERS {
                *self.refusal = Some(Refusal::TooMany);
                return Err(de::Error::custom("too many members"));
            }
            if members.iter().any(|(n, _)| *n == name) {
                *self.refusal = Some(Refusal::Duplicate(name.into_owned()));
                return Err(de::Error::custom("duplicate member"));
            }
            members.push((name, value));
        }
        Ok(members)
    }
}

fn syntax_error(e: &serde_json::Error) -> InspectError {
    InspectError::new(
        "invalid_json",
        format!("the request body is not valid JSON: {e}"),
    )
}

impl<'a> JsonObject<'a> {
    /// Reads a body that must be one JSON object (and nothing after it but whitespace).
    pub fn parse(body: &'a [u8]) -> Result<JsonObject<'a>, InspectError> {
        let mut refusal = None;
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = de.deserialize_map(Members {
            refusal: &mut refusal,
            _marker: std::marker::PhantomData,
        });
        let members = match (read, refusal) {
            (_, Some(Refusal::Duplicate(name))) => {
                return Err(InspectError::new(
                    "duplicate_field",
                    format!(
                        "the member `{name}` appears more than once in the request body; send it once"
                    ),
                )
                .with_param(name));
            }
            (_, Some(Refusal::TooMany)) => {
                return Err(InspectError::new(
                    "invalid_body",
                    format!("the request body has more than {MAX_MEMBERS} top-level members"),
                ));
            }
            (Ok(members), None) => members,
            (Err(e), None) => {
                return Err(match e.classify() {
                    serde_json::error::Category::Data => {
                        InspectError::new("invalid_body", "the request body must be a JSON object")
                    }
                    _ => syntax_error(&e),
                });
            }
        };
        de.end().map_err(|e| syntax_error(&e))?;
        Ok(JsonObject { members })
    }

    /// The raw value of a top-level member.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// `model`: absent or `null` → `None`; a string → its value; anything else is an error.
    pub fn model(&self) -> Result<Option<String>, InspectError> {
        match self.get("model") {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str::<String>(raw.get())
                .map(Some)
                .map_err(|_| {
                    InspectError::new("invalid_model", "`model` must be a string")
                        .with_param("model")
                }),
        }
    }

    /// `stream`: absent or `null` → false; `true`/`false`; anything else is an error (a
    /// server that reads `"true"` or `1` as true would stream what the gateway took for
    /// a plain answer).
    pub fn stream(&self) -> Result<bool, InspectError> {
        optional_bool(self.get("stream"), "stream")
    }

    /// The most output the body allows: the largest of `max_completion_tokens`,
    /// `max_tokens` and `max_output_tokens` (the names of chat, completions and
    /// responses), times `n` (choices). `None` if none is set. Each must be absent, `null`
    /// or a whole number (what the gateway reserves for must be what the provider reads).
    pub fn output_limit(&self) -> Result<Option<u64>, InspectError> {
        let mut limit: Option<u64> = None;
        for field in ["max_completion_tokens", "max_tokens", "max_output_tokens"] {
            if let Some(v) = optional_count(self.get(field), field)? {
                limit = Some(limit.map_or(v, |l| l.max(v)));
            }
        }
        let n = optional_count(self.get("n"), "n")?.unwrap_or(1).max(1);
        Ok(limit.map(|l| l.saturating_mul(n)))
    }

    /// `stream_options.include_usage`: absent → false. `stream_options` must be an object
    /// (or `null`) without repeated members, and `include_usage` a boolean.
    pub fn include_usage(&self) -> Result<bool, InspectError> {
        let Some(raw) = self.get("stream_options") else {
            return Ok(false);
        };
        if raw.get() == "null" {
            return Ok(false);
        }
        let inner = JsonObject::parse(raw.get().as_bytes()).map_err(|e| match e.code {
            "duplicate_field" => e,
            _ => InspectError::new(
                "invalid_stream_options",
                "`stream_options` must be an object",
            )
            .with_param("stream_options"),
        })?;
        optional_bool(inner.get("include_usage"), "stream_options.include_usage")
    }

    /// The body with `model` set to `model` (if given) and `stream_options.include_usage`
    /// set to true (if asked); every other member keeps its exact bytes and place.
    pub fn rewrite(&self, model: Option<&str>, include_usage: bool) -> Vec<u8> {
        let size = self
            .members
            .iter()
            .map(|(n, v)| n.len() + v.get().len() + 4)
            .sum::<usize>();
        let mut out = ObjectWriter::with_capacity(size + 64);
        let model = model.map(quote);
        let mut saw_options = false;
        for (name, value) in &self.members {
            match (name.as_ref(), &model) {
                ("model", Some(m)) => out.member(name, m),
                ("stream_options", _) if include_usage => {
                    saw_options = true;
                    out.member(name, &with_include_usage(value));
                }
                _ => out.member(name, value.get()),
            }
        }
        if let Some(m) = &model
            && self.get("model").is_none()
        {
            out.member("model", m);
        }
        if include_usage && !saw_options {
            out.member("stream_options", "{\"include_usage\":true}");
        }
        out.finish().into_bytes()
    }
}

/// Writes an object member by member.
struct ObjectWriter {
    out: String,
}

impl ObjectWriter {
    fn with_capacity(n: usize) -> Self {
        let mut out = String::with_capacity(n);
        out.push('{');
        ObjectWriter { out }
    }

    fn member(&mut self, name: &str, raw_value: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&quote(name));
        self.out.push(':');
        self.out.push_str(raw_value);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    // Serializing a string cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// `stream_options` with `include_usage: true`, other members kept as sent.
fn with_include_usage(raw: &RawValue) -> String {
    let mut out = ObjectWriter::with_capacity(raw.get().len() + 24);
    // `null` has no members (its validity was checked by `include_usage`).
    if let Ok(inner) = JsonObject::parse(raw.get().as_bytes()) {
        for (name, value) in inner.members.iter().filter(|(n, _)| n != "include_usage") {
            out.member(name, value.get());
        }
    }
    out.member("include_usage", "true");
    out.finish()
}

fn optional_count(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<u64>, InspectError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => serde_json::from_str::<u64>(text).map(Some).map_err(|_| {
            InspectError::new("invalid_body", format!("`{field}` must be a whole number"))
                .with_param(field)
        }),
    }
}

fn optional_bool(raw: Option<&RawValue>, field: &'static str) -> Result<bool, InspectError> {
    match raw.map(RawValue::get) {
        None | Some("null") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(InspectError::new(
            "invalid_body",
            format!("`{field}` must be true or false"),
        )
        .with_param(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_limits_are_read_strictly() {
        let limit = |body: &str| JsonObject::parse(body.as_bytes()).unwrap().output_limit();
        assert_eq!(limit(r#"{"model":"m"}"#).unwrap(), None);
        assert_eq!(limit(r#"{"max_tokens":100}"#).unwrap(), Some(100));
        assert_eq!(
            limit(r#"{"max_completion_tokens":50,"max_tokens":80}"#).unwrap(),
            Some(80)
        );
        assert_eq!(
            limit(r#"{"max_output_tokens":10,"n":3}"#).unwrap(),
            Some(30)
        );
        assert_eq!(limit(r#"{"max_tokens":null}"#).unwrap(), None);
        for bad in [
            r#"{"max_tokens":"100"}"#,
            r#"{"max_tokens":-1}"#,
            r#"{"max_tokens":1.5}"#,
            r#"{"max_tokens":1e3}"#,
            r#"{"max_tokens":10,"n":"2"}"#,
        ] {
            assert_eq!(limit(bad).unwrap_err().code, "invalid_body", "{bad}");
        }
    }

    fn code(body: &str) -> Option<&'static str> {
        JsonObject::parse(body.as_bytes()).err().map(|e| e.code)
    }

    #[test]
    fn classification() {
        assert_eq!(code("{\"model\": "), Some("invalid_json"));
        assert_eq!(code("{} trailing"), Some("invalid_json"));
        assert_eq!(code("[1, 2]"), Some("invalid_body"));
        assert_eq!(code("\"text\""), Some("invalid_body"));
        assert_eq!(code("{\"a\":1,\"a\":2}"), Some("duplicate_field"));
        // Escapes are resolved before names are compared, as every JSON reader does.
        assert_eq!(
            code("{\"model\":\"a\",\"mod\\u0065l\":\"b\"}"),
            Some("duplicate_field")
        );
        assert_eq!(code("\u{feff}{}"), Some("invalid_json"));
        assert_eq!(code("{\"a\": NaN}"), Some("invalid_json"));
        assert_eq!(
            code("{\"model\": \"m\", \"messages\": [{\"big\": [1,2,3]}]}"),
            None
        );
    }

    #[test]
    fn depth_is_not_a_limit() {
        let deep = format!(
            "{{\"model\":\"m\",\"x\":{}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let obj = JsonObject::parse(deep.as_bytes()).unwrap();
        assert_eq!(obj.model().unwrap().as_deref(), Some("m"));
        let rewritten = obj.rewrite(Some("n"), true);
        let again = JsonObject::parse(&rewritten).unwrap();
        assert_eq!(again.model().unwrap().as_deref(), Some("n"));
        assert!(again.include_usage().unwrap());
    }

    #[test]
    fn fields() {
        let obj = JsonObject::parse(br#"{"model":"m","stream":true}"#).unwrap();
        assert_eq!(obj.model().unwrap().as_deref(), Some("m"));
        assert!(obj.stream().unwrap());
        assert!(!obj.include_usage().unwrap());
        for bad in [
            r#"{"stream":"true"}"#,
            r#"{"stream":1}"#,
            r#"{"stream":{}}"#,
        ] {
            assert!(JsonObject::parse(bad.as_bytes()).unwrap().stream().is_err());
        }
        let bad_model = JsonObject::parse(br#"{"model":4}"#).unwrap();
        assert_eq!(bad_model.model().unwrap_err().code, "invalid_model");
        let lone = JsonObject::parse(br#"{"model":"\ud800"}"#).unwrap();
        assert!(
            lone.model().is_err(),
            "a lone surrogate is not a model name"
        );
        let opts = JsonObject::parse(br#"{"stream_options":{"include_usage":true}}"#).unwrap();
        assert!(opts.include_usage().unwrap());
        let dup = JsonObject::parse(
            br#"{"stream_options":{"include_usage":false,"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(dup.include_usage().unwrap_err().code, "duplicate_field");
    }

    #[test]
    fn rewrite_keeps_everything_else() {
        let body = br#"{ "messages" : [ {"role":"user","content":"h\u00e9"} ], "model":"a", "n": 2, "stream":true, "stream_options":{"x":1} }"#;
        let obj = JsonObject::parse(body).unwrap();
        let out = obj.rewrite(Some("b\"c"), true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let original: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["model"], "b\"c");
        assert_eq!(v["messages"], original["messages"]);
        assert_eq!(v["n"], 2);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        let added = JsonObject::parse(br#"{"stream":true}"#)
            .unwrap()
            .rewrite(None, true);
        assert_eq!(
            added,
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        let null_opts = JsonObject::parse(br#"{"stream_options":null}"#)
            .unwrap()
            .rewrite(None, true);
        assert_eq!(null_opts, br#"{"stream_options":{"include_usage":true}}"#);
    }
}
