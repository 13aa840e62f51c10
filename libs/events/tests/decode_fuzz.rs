//! Property targets for the event decoder: arbitrary bytes, and envelopes with arbitrary
//! types, versions and data, never panic; every event encodes and decodes back to itself.
//! Run longer with `PROPTEST_CASES=1000000 cargo test -p sg-events --test decode_fuzz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sg_events::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_envelopes_never_panic(
        type_index in any::<usize>(),
        version in 0u16..5,
        data in json_value(),
    ) {
        let type_name = EVENT_TYPES[type_index % EVENT_TYPES.len()].0;
        let envelope = serde_json::json!({
            "id": "0190f0c2-0000-7000-8000-000000000000",
            "type": type_name,
            "version": version,
            "tenant_id": "ten_abc",
            "aggregate_id": "x",
            "time": "2026-01-01T00:00:00Z",
            "actor": "operator",
            "data": data,
        });
        let bytes = serde_json::to_vec(&envelope).unwrap();
        if let Ok(decoded) = decode(&bytes) {
            // What decodes re-encodes and decodes to the same event.
            prop_assert_eq!(decode(&encode(&decoded)).unwrap(), decoded);
        }
    }

    #[test]
    fn events_round_trip(name in "[ -~]{0,40}", reason in proptest::option::of("[ -~]{0,40}")) {
        let tenant = TenantId::generate();
        for event in [
            Event::TenantCreated(TenantCreatedV2 { plan: None, name: name.clone() }),
            Event::KeyRevoked(KeyRevokedV1 { key_id: KeyId::generate(), project_id: ProjectId::generate(), reason: reason.clone() }),
            Event::ModelRouted(ModelRoutedV1 { project_id: ProjectId::generate(), model: name.clone(), connection_id: ConnectionId::generate(Provider::Openai), upstream_model: name.clone() }),
        ] {
            let env = Envelope::new(tenant.clone(), Actor::operator(), event);
            prop_assert_eq!(decode(&encode(&env)).unwrap(), env);
        }
    }
}
