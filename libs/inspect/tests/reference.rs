//! Body inspection against reference parsers: whatever the inspector accepts, a
//! reference reader (serde_json's document model, which like most servers keeps the last
//! of a repeated member; multer for forms, keeping the last `model` field as common
//! servers do) reads the same model from — or the inspector refuses the body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Part, config, form, part};
use proptest::prelude::*;
use sg_inspect::{JsonObject, classify, inspect, multipart};

// ---- JSON ------------------------------------------------------------------------------

fn json_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"model\"".to_owned()),
        Just("\"mod\\u0065l\"".to_owned()),
        Just("\"Model\"".to_owned()),
        Just("\"stream\"".to_owned()),
        Just("\"messages\"".to_owned()),
        Just("\"n\"".to_owned()),
        "\"[a-z]{1,6}\"",
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"gpt-4o-mini\"".to_owned()),
        Just("\"gpt-4\"".to_owned()),
        Just("\"g\\u0070t-4\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("1".to_owned()),
        Just("[{\"role\":\"user\",\"content\":\"hi\"}]".to_owned()),
        Just("{\"a\":{\"b\":[1,2,{}]}}".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        Just("NaN".to_owned()),
        "\"[ -~]{0,8}\"",
    ]
}

fn json_body() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((json_name(), json_value()), 0..6),
        prop::bool::ANY,
    )
        .prop_map(|(members, spaced)| {
            let sep = if spaced { " , " } else { "," };
            let inner: Vec<String> = members.iter().map(|(n, v)| format!("{n}:{v}")).collect();
            format!("{{{}}}", inner.join(sep))
        })
}

/// The reference refuses lone UTF-16 surrogates (`"\ud800"`) anywhere; most servers
/// (Python's `json`, for one) accept them. Below the top level the inspector does not
/// look at strings, so it accepts them too — its reading of `model` is unaffected, and a
/// lone surrogate in `model` itself is refused.
fn reference_refuses_only_a_surrogate(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    m.contains("surrogate") || m.contains("hex escape")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn json_model_agrees_with_the_reference_or_is_refused(body in json_body()) {
        let ours = JsonObject::parse(body.as_bytes()).and_then(|o| o.model());
        let reference: Result<serde_json::Value, _> = serde_json::from_str(&body);
        if let Ok(model) = ours {
            let reference = match reference {
                Ok(v) => v,
                Err(e) if reference_refuses_only_a_surrogate(&e) => return Ok(()),
                Err(e) => panic!("the inspector accepted what the reference cannot read: {e}"),
            };
            let expected = reference.get("model").and_then(|m| m.as_str()).map(str::to_owned);
            prop_assert_eq!(model, expected, "{}", body);
        }
    }

    #[test]
    fn json_rewrite_is_read_back_by_the_reference(body in json_body(), model in "[a-z0-9-]{1,12}") {
        let strict = serde_json::from_str::<serde_json::Value>(&body);
        if strict.as_ref().is_err_and(reference_refuses_only_a_surrogate) {
            return Ok(());
        }
        if let Ok(object) = JsonObject::parse(body.as_bytes()) {
            let out = object.rewrite(Some(&model), true);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(v["model"].as_str(), Some(model.as_str()));
            prop_assert_eq!(&v["stream_options"]["include_usage"], &serde_json::Value::Bool(true));
            // Every other member survives unchanged.
            let original: serde_json::Value = serde_json::from_str(&body).unwrap();
            for (name, value) in original.as_object().unwrap() {
                if name != "model" && name != "stream_options" {
                    prop_assert_eq!(&v[name], value);
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), ct in "[ -~]{0,40}") {
        let _ = JsonObject::parse(&bytes).map(|o| (o.model(), o.stream(), o.include_usage()));
        let _ = multipart::parse("b", &bytes);
        let _ = inspect(&classify("POST", "/v1/chat/completions"), Some(&ct), &bytes);
        let _ = sg_inspect::path::check(&String::from_utf8_lossy(&bytes));
    }
}

// ---- multipart -------------------------------------------------------------------------

/// The last `model` field, as common servers resolve a repeated field; `Err` if multer
/// cannot read the form.
fn reference_model(body: Vec<u8>) -> Result<Option<String>, multer::Error> {
    futures::executor::block_on(async move {
        let stream =
            futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) });
        let mut form = multer::Multipart::new(stream, "BoUnDaRy");
        let mut model = None;
        while let Some(field) = form.next_field().await? {
            if field.name() == Some("model") {
                model = Some(field.text().await?);
            } else {
                field.bytes().await?;
            }
        }
        Ok(model)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn form_model_agrees_with_the_reference_or_is_refused(
        parts in prop::collection::vec(part(), 1..5),
        newline in prop::sample::select(vec!["\r\n", "\n"]),
        preamble in prop::sample::select(vec!["", "junk\r\n"]),
        padding in prop::sample::select(vec!["", " "]),
    ) {
        let body = form(&parts, newline, preamble, padding);
        if let Ok(ours) = multipart::parse("BoUnDaRy", &body) {
            let reference = reference_model(body.clone())
                .expect("the inspector accepted a form the reference cannot read");
            prop_assert_eq!(ours.model, reference, "{:?}", String::from_utf8_lossy(&body));
        }
    }
}

#[test]
fn the_reference_disagrees_where_the_inspector_refuses() {
    // These are the bypasses this crate exists to close: the reference reader (like the
    // gateway before) sees one model, a server another. The inspector refuses each.
    let upper = form(
        &[
            Part {
                disposition_name: "Content-Disposition",
                name: "name=\"model\"",
                extra: "",
                content: "allowed",
            },
            Part {
                disposition_name: "Content-Disposition",
                name: "NAME=\"model\"",
                extra: "",
                content: "forbidden",
            },
        ],
        "\r\n",
        "",
        "",
    );
    assert!(multipart::parse("BoUnDaRy", &upper).is_err());
    let two = form(
        &[
            Part {
                disposition_name: "Content-Disposition",
                name: "name=\"model\"",
                extra: "",
                content: "allowed",
            },
            Part {
                disposition_name: "Content-Disposition",
                name: "name=\"model\"",
                extra: "",
                content: "forbidden",
            },
        ],
        "\r\n",
        "",
        "",
    );
    assert_eq!(
        reference_model(two.clone()).unwrap().as_deref(),
        Some("forbidden")
    );
    assert_eq!(
        multipart::parse("BoUnDaRy", &two).unwrap_err().code,
        "duplicate_field"
    );
}
