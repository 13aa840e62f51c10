//! Checks on what owners type: names, model names, provider keys, OpenAI settings.

use sg_api_error::ApiError;
use sg_events::Provider;

type ApiResult<T> = Result<T, ApiError>;

/// Whether `c` is invisible or reorders text: a control character, or a format
/// character (Unicode category Cf) — bidirectional overrides and isolates, zero-width
/// spaces and joiners, the byte-order mark, tag characters. Such characters make a name
/// display as something it is not.
pub(crate) fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

/// A display name: 1 to 128 characters once trimmed, none invisible.
pub(crate) fn name(field: &'static str, name: &str) -> ApiResult<String> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 128 || trimmed.chars().any(is_invisible) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "`{field}` must be 1 to 128 characters without control, zero-width or \
                 bidirectional formatting characters"
            ),
        )
        .with_param(field));
    }
    Ok(trimmed.to_owned())
}

/// A model name: 1 to 256 bytes, none invisible, no surrounding whitespace (requests
/// are matched exactly).
pub(crate) fn model_name(field: &'static str, name: &str) -> ApiResult<String> {
    if name.is_empty() || name.len() > 256 || name.trim() != name || name.chars().any(is_invisible)
    {
        return Err(ApiError::bad_request(
            "invalid_model",
            format!(
                "`{field}` must be 1 to 256 bytes without surrounding spaces or control, \
                 zero-width or bidirectional formatting characters"
            ),
        )
        .with_param(field));
    }
    Ok(name.to_owned())
}

/// A model allow-list, deduplicated in order.
pub(crate) fn model_list(field: &'static str, models: Vec<String>) -> ApiResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for m in models {
        let m = model_name(field, &m)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// A provider key as typed (trimmed), refused if the provider could not be sent it.
pub(crate) fn provider_key(provider: Provider, key: &str) -> ApiResult<()> {
    provider.check_api_key(key).map_err(|why| {
        ApiError::bad_request("invalid_api_key", format!("`api_key` {why}")).with_param("api_key")
    })
}

/// An OpenAI organization or project id (`org-…`, `proj_…`), only on OpenAI connections.
/// Azure OpenAI's `api-version`: `YYYY-MM-DD`, optionally `-preview`.
pub(crate) fn api_version(provider: Provider, value: Option<String>) -> ApiResult<Option<String>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if provider != Provider::AzureOpenai {
        return Err(ApiError::bad_request(
            "invalid_setting",
            "`api_version` applies only to Azure OpenAI connections",
        )
        .with_param("api_version"));
    }
    let value = value.trim();
    let date = value.strip_suffix("-preview").unwrap_or(value);
    let b = date.as_bytes();
    let valid = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&i| b[i].is_ascii_digit());
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_setting",
            "`api_version` must be YYYY-MM-DD or YYYY-MM-DD-preview",
        )
        .with_param("api_version"));
    }
    Ok(Some(value.to_owned()))
}

pub(crate) fn openai_setting(
    field: &'static str,
    provider: Provider,
    value: Option<String>,
) -> ApiResult<Option<String>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if provider != Provider::Openai {
        return Err(ApiError::bad_request(
            "invalid_setting",
            format!("`{field}` applies only to OpenAI connections"),
        )
        .with_param(field));
    }
    let value = value.trim();
    let valid = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_setting",
            format!("`{field}` must be an OpenAI id: 1 to 128 letters, digits, `-` or `_`"),
        )
        .with_param(field));
    }
    Ok(Some(value.to_owned()))
}

/// A whole number of at least 1, naming `field` if it is not.
fn count(field: &'static str, n: &Option<serde_json::Number>) -> ApiResult<Option<u64>> {
    match n {
        None => Ok(None),
        Some(n) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_limits",
                format!("`{field}` must be a whole number of at least 1"),
            )
            .with_param(field)
        }),
    }
}

/// Limits as the owner wrote them: whole numbers within range, a positive budget with a
/// known period. Errors name the field (`limits.rpm`, `limits.budget.usd`, …).
pub(crate) fn limits(l: &crate::api::Limits) -> ApiResult<sg_spend::Limits> {
    let budget = match &l.budget {
        None => None,
        Some(b) => {
            let period = match b.period.as_str() {
                "day" => sg_spend::Period::Day,
                "month" => sg_spend::Period::Month,
                "total" => sg_spend::Period::Total,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_limits",
                        "`budget.period` must be `day`, `month` or `total`",
                    )
                    .with_param("limits.budget.period"));
                }
            };
            let micros = b
                .usd
                .as_f64()
                .and_then(|usd| sg_spend::usd_to_micros(usd, 10_000_000.0))
                .filter(|m| *m > 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limits",
                        "`budget.usd` must be more than 0 and at most 10000000",
                    )
                    .with_param("limits.budget.usd")
                })?;
            Some(sg_spend::Budget { micros, period })
        }
    };
    let limits = sg_spend::Limits {
        rpm: count("limits.rpm", &l.rpm)?,
        rpd: count("limits.rpd", &l.rpd)?,
        tpm: count("limits.tpm", &l.tpm)?,
        concurrent: count("limits.concurrent", &l.concurrent)?,
        budget,
    };
    limits.validate().map_err(|e| {
        ApiError::bad_request("invalid_limits", format!("`{}` {}", e.field, e.message))
            .with_param(format!("limits.{}", e.field))
    })?;
    Ok(limits)
}

/// A price in USD per million tokens, as micro-dollars.
pub(crate) fn usd_per_mtok(field: &'static str, n: &serde_json::Number) -> ApiResult<u64> {
    n.as_f64()
        .and_then(|usd| sg_spend::usd_to_micros(usd, sg_spend::price::MAX_USD_PER_MTOK))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_price",
                format!("`{field}` must be a number of US dollars from 0 to 1000000"),
            )
            .with_param(field)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_of(json: serde_json::Value) -> ApiResult<sg_spend::Limits> {
        limits(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn limits_errors_name_the_field() {
        let ok =
            limits_of(serde_json::json!({"rpm": 100, "budget": {"usd": 5.5, "period": "month"}}))
                .unwrap();
        assert_eq!(ok.rpm, Some(100));
        assert_eq!(ok.budget.unwrap().micros, 5_500_000);
        for (json, param) in [
            (serde_json::json!({"rpm": 0}), "limits.rpm"),
            (serde_json::json!({"rpm": -1}), "limits.rpm"),
            (serde_json::json!({"rpd": 1.5}), "limits.rpd"),
            (serde_json::json!({"tpm": 1e30}), "limits.tpm"),
            (
                serde_json::json!({"concurrent": 2_000_000}),
                "limits.concurrent",
            ),
            (
                serde_json::json!({"budget": {"usd": 0, "period": "day"}}),
                "limits.budget.usd",
            ),
            (
                serde_json::json!({"budget": {"usd": -5, "period": "day"}}),
                "limits.budget.usd",
            ),
            (
                serde_json::json!({"budget": {"usd": 1e12, "period": "day"}}),
                "limits.budget.usd",
            ),
            (
                serde_json::json!({"budget": {"usd": 5, "period": "week"}}),
                "limits.budget.period",
            ),
        ] {
            let e = limits_of(json.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{json}");
            assert_eq!(e.param.as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn names_without_invisible_characters() {
        assert_eq!(name("name", "  acme  ").unwrap(), "acme");
        assert!(name("name", "Zürich 東京 🚀").is_ok());
        for bad in [
            "",
            "   ",
            "evil\u{202E}gpj.exe",
            "zero\u{200B}width",
            "join\u{200D}er",
            "bom\u{FEFF}",
            "iso\u{2067}late",
            "tab\tbed",
            "tag\u{E0041}",
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
        assert!(name("name", &"x".repeat(129)).is_err());
    }

    #[test]
    fn model_names_are_exact() {
        assert!(model_name("m", "gpt-4o-mini").is_ok());
        assert!(model_name("m", "ft:gpt-4o:acme::abc").is_ok());
        for bad in ["", " gpt", "gpt ", "gp\u{200B}t", "a\nb"] {
            assert!(model_name("m", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            model_list("m", vec!["a".into(), "b".into(), "a".into()]).unwrap(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn api_versions() {
        let v = |p, s: &str| api_version(p, Some(s.to_owned()));
        assert_eq!(
            v(Provider::AzureOpenai, "2024-10-21").unwrap().as_deref(),
            Some("2024-10-21")
        );
        assert!(v(Provider::AzureOpenai, "2025-04-01-preview").is_ok());
        assert!(v(Provider::AzureOpenai, "2025-4-1").is_err());
        assert!(v(Provider::AzureOpenai, "2024-10-21&x=1").is_err());
        assert!(v(Provider::Openai, "2024-10-21").is_err());
        assert_eq!(api_version(Provider::Openai, None).unwrap(), None);
    }

    #[test]
    fn openai_settings() {
        assert_eq!(
            openai_setting("o", Provider::Openai, Some("org-abc_1".into())).unwrap(),
            Some("org-abc_1".into())
        );
        assert!(openai_setting("o", Provider::Mock, Some("org".into())).is_err());
        assert!(openai_setting("o", Provider::Openai, Some("org x".into())).is_err());
        assert!(openai_setting("o", Provider::Openai, Some("org\r\nx".into())).is_err());
    }
}
