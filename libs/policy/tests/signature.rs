#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use sg_policy::signature::{encode_signature, signing_message};
use sg_policy::{SignatureParseError, parse_signature_headers};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_headers_never_panic(
        ts in proptest::option::of(any::<String>()),
        sig in proptest::option::of(any::<String>()),
    ) {
        let r = parse_signature_headers(ts.as_deref(), sig.as_deref());
        if ts.is_none() && sig.is_none() {
            prop_assert_eq!(r, Ok(None));
        }
        if let Ok(Some((t, _))) = r {
            prop_assert!(t >= 0);
        }
    }

    #[test]
    fn base64ish_signatures_never_panic(
        ts in "[0-9]{0,25}",
        sig in "[A-Za-z0-9+/=_ -]{0,210}",
    ) {
        let _ = parse_signature_headers(Some(&ts), Some(&sig));
    }

    #[test]
    fn valid_headers_round_trip(ts in 0..=i64::MAX, sig in proptest::array::uniform32(any::<u8>()),
                                sig2 in proptest::array::uniform32(any::<u8>()), pad in any::<bool>()) {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&sig);
        bytes[32..].copy_from_slice(&sig2);
        let mut b64 = encode_signature(&bytes);
        if !pad {
            b64 = b64.trim_end_matches('=').to_owned();
        }
        prop_assert_eq!(
            parse_signature_headers(Some(&ts.to_string()), Some(&b64)),
            Ok(Some((ts, bytes)))
        );
    }

    #[test]
    fn wrong_length_is_refused(len in 0usize..140) {
        prop_assume!(len != 64);
        let b64 = STANDARD.encode(vec![0xa5u8; len]);
        let r = parse_signature_headers(Some("1700000000"), Some(&b64));
        if b64.len() > 200 {
            prop_assert_eq!(r, Err(SignatureParseError::TooLong));
        } else {
            prop_assert_eq!(r, Err(SignatureParseError::InvalidLength));
        }
    }

    #[test]
    fn signing_message_layout(
        ts in any::<i64>(),
        method in "[A-Za-z]{1,8}",
        path in "/[ -~]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let hash = sg_policy::signature::body_sha256(&body);
        let m = signing_message(ts, &method, &path, &hash);
        let expected = format!(
            "SG1\n{ts}\n{}\n{path}\n{}",
            method.to_ascii_uppercase(),
            hex::encode(hash)
        );
        prop_assert_eq!(m, expected);
    }
}
