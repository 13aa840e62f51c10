//! The JSON Schema files and golden examples under `schemas/` at the workspace root,
//! checked against the Rust types both ways.
//!
//! - Rust → schema: the schemas generated from the types must equal the committed files.
//!   `SG_UPDATE_SCHEMAS=1 cargo test -p sg-events --test schemas` rewrites them instead.
//! - Schema → Rust: every golden example validates against the committed schemas,
//!   decodes, and (for current versions) re-encodes to the same JSON.
//!
//! Every version from 1 up to the current one of each type in [`EVENT_TYPES`] has a
//! schema file and an example: old versions stay, and their examples must still decode.
// A panic in a test helper is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use sg_events::{EVENT_TYPES, Envelope, data_schema, decode, encode, envelope_schema};

/// The envelope's wire version; its schema file is `envelope.v<N>.schema.json`.
const ENVELOPE_VERSION: u16 = 1;

const UPDATE_VAR: &str = "SG_UPDATE_SCHEMAS";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn examples_dir() -> PathBuf {
    schemas_dir().join("examples")
}

fn update_mode() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1")
}

/// Every (type, version) that must have a schema file and an example: all versions
/// from 1 to the current one.
fn all_versions() -> Vec<(&'static str, u16)> {
    EVENT_TYPES
        .iter()
        .flat_map(|&(name, current)| (1..=current).map(move |v| (name, v)))
        .collect()
}

fn current_version(type_name: &str) -> Option<u16> {
    EVENT_TYPES
        .iter()
        .find(|(name, _)| *name == type_name)
        .map(|&(_, v)| v)
}

fn data_schema_file(type_name: &str, version: u16) -> String {
    format!("{type_name}.v{version}.schema.json")
}

fn envelope_schema_file() -> String {
    format!("envelope.v{ENVELOPE_VERSION}.schema.json")
}

fn example_file(type_name: &str, version: u16) -> String {
    format!("{type_name}.v{version}.json")
}

/// The schema files as the Rust types generate them: (file name, contents).
fn generated() -> Vec<(String, String)> {
    // Keys sorted before schemars puts its leading keywords (`$schema`, `title`, …) first,
    // so the text does not depend on whether some crate in the build turns on serde_json's
    // `preserve_order`.
    let render = |schema: schemars::Schema| {
        let mut value = schema.to_value();
        value.sort_all_objects();
        let schema = schemars::Schema::try_from(value).unwrap();
        let mut text = serde_json::to_string_pretty(&schema).unwrap();
        text.push('\n');
        text
    };
    let mut files = vec![(envelope_schema_file(), render(envelope_schema()))];
    for (name, version) in all_versions() {
        let schema = data_schema(name, version)
            .unwrap_or_else(|| panic!("data_schema({name:?}, {version}) returned None"));
        files.push((data_schema_file(name, version), render(schema)));
    }
    files
}

/// In update mode, writes the generated schema files (once per test run) before any
/// test reads them.
fn prepare() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if update_mode() {
            fs::create_dir_all(schemas_dir()).unwrap();
            for (file, text) in generated() {
                let path = schemas_dir().join(&file);
                if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    fs::write(&path, text).unwrap();
                }
            }
        }
    });
}

fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
}

/// The schema's validation errors for `instance`, one line each.
fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path))
        .collect()
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The committed envelope schema, and each example with the committed schema of its
/// `data`: (type, version, example, data validator).
struct Golden {
    envelope: jsonschema::Validator,
    examples: Vec<(&'static str, u16, Value, jsonschema::Validator)>,
}

fn golden() -> Golden {
    prepare();
    let envelope = validator(&read_json(&schemas_dir().join(envelope_schema_file())));
    let examples = all_versions()
        .into_iter()
        .map(|(name, version)| {
            let example = read_json(&examples_dir().join(example_file(name, version)));
            let schema = read_json(&schemas_dir().join(data_schema_file(name, version)));
            (name, version, example, validator(&schema))
        })
        .collect();
    Golden { envelope, examples }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

// ---- (a) the files that must exist, and no others ---------------------------------

#[test]
fn every_event_type_has_a_schema_and_an_example_and_nothing_else_is_there() {
    prepare();
    let mut expected_schemas: BTreeSet<String> = [
        "README.md".to_owned(),
        "examples".to_owned(),
        envelope_schema_file(),
    ]
    .into();
    let mut expected_examples = BTreeSet::new();
    for (name, version) in all_versions() {
        expected_schemas.insert(data_schema_file(name, version));
        expected_examples.insert(example_file(name, version));
    }

    let found_schemas = file_names(&schemas_dir());
    let found_examples = file_names(&examples_dir());
    let missing: Vec<_> = expected_schemas
        .difference(&found_schemas)
        .chain(expected_examples.difference(&found_examples))
        .collect();
    let stray: Vec<_> = found_schemas
        .difference(&expected_schemas)
        .chain(found_examples.difference(&expected_examples))
        .collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "schemas/ does not match EVENT_TYPES: missing {missing:?}, stray {stray:?}"
    );
}

// ---- (b) Rust → schema ---------------------------------------------------------------

#[test]
fn committed_schemas_equal_the_generated_ones() {
    prepare();
    let stale: Vec<String> = generated()
        .into_iter()
        .filter(|(file, text)| {
            fs::read_to_string(schemas_dir().join(file)).ok().as_deref() != Some(text.as_str())
        })
        .map(|(file, _)| file)
        .collect();
    assert!(
        stale.is_empty(),
        "schema files differ from the Rust types: {stale:?}\n\
         If the change is intended (a new version, or descriptions only), run\n\
         `{UPDATE_VAR}=1 cargo test -p sg-events --test schemas` and commit the result."
    );
}

// ---- (c) schema → Rust ---------------------------------------------------------------

#[test]
fn golden_examples_validate_decode_and_round_trip() {
    let golden = golden();
    for (name, version, example, data_validator) in &golden.examples {
        let file = example_file(name, *version);
        assert_eq!(example["type"], *name, "{file}: wrong `type`");
        assert_eq!(example["version"], *version, "{file}: wrong `version`");

        let errors = schema_errors(&golden.envelope, example);
        assert!(errors.is_empty(), "{file}: envelope schema: {errors:#?}");
        let errors = schema_errors(data_validator, &example["data"]);
        assert!(errors.is_empty(), "{file}: data schema: {errors:#?}");

        let envelope =
            decode(&to_bytes(example)).unwrap_or_else(|e| panic!("{file}: does not decode: {e}"));
        assert_eq!(envelope.event.type_name(), *name, "{file}");
        let fresh = Envelope::new(
            envelope.tenant_id.clone(),
            envelope.actor.clone(),
            envelope.event.clone(),
        );
        assert_eq!(
            envelope.aggregate_id, fresh.aggregate_id,
            "{file}: `aggregate_id` is not the one the event belongs to"
        );
        let reencoded: Value = serde_json::from_slice(&encode(&envelope)).unwrap();

        let current = current_version(name).unwrap();
        if *version == current {
            assert_eq!(&reencoded, example, "{file}: re-encoding changed it");
        } else {
            // An old version is upcast: it re-encodes as the current version.
            assert_eq!(reencoded["version"], current, "{file}: not upcast");
            assert!(
                golden.envelope.is_valid(&reencoded),
                "{file}: upcast envelope"
            );
        }
    }
}

// ---- (d) negative cases ------------------------------------------------------------

/// The names listed in an object schema's `required`.
fn required_fields(schema: &Value) -> Vec<String> {
    schema["required"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_missing_required_field_fails_the_schema_and_decode() {
    let golden = golden();
    let envelope_required =
        required_fields(&read_json(&schemas_dir().join(envelope_schema_file())));
    assert!(!envelope_required.is_empty());

    for (name, version, example, data_validator) in &golden.examples {
        let file = example_file(name, *version);

        for field in &envelope_required {
            let mut broken = example.clone();
            broken.as_object_mut().unwrap().remove(field);
            assert!(
                !golden.envelope.is_valid(&broken),
                "{file}: envelope schema accepts it without `{field}`"
            );
            assert!(
                decode(&to_bytes(&broken)).is_err(),
                "{file}: decodes without `{field}`"
            );
        }

        let data_schema = read_json(&schemas_dir().join(data_schema_file(name, *version)));
        let data_required = required_fields(&data_schema);
        assert!(!data_required.is_empty(), "{file}: no required data field");
        for field in &data_required {
            let mut broken = example.clone();
            broken["data"].as_object_mut().unwrap().remove(field);
            assert!(
                !data_validator.is_valid(&broken["data"]),
                "{file}: data schema accepts it without `{field}`"
            );
            assert!(
                decode(&to_bytes(&broken)).is_err(),
                "{file}: decodes without data.{field}"
            );
        }
    }
}

#[test]
fn an_unknown_field_fails_the_schema_and_decode() {
    let golden = golden();
    for (name, version, example, data_validator) in &golden.examples {
        let file = example_file(name, *version);

        let mut broken = example.clone();
        broken["unexpected"] = Value::from("x");
        assert!(
            !golden.envelope.is_valid(&broken),
            "{file}: envelope schema accepts an unknown field"
        );
        assert!(
            decode(&to_bytes(&broken)).is_err(),
            "{file}: decodes with an unknown envelope field"
        );

        let mut broken = example.clone();
        broken["data"]["unexpected"] = Value::from("x");
        assert!(
            !data_validator.is_valid(&broken["data"]),
            "{file}: data schema accepts an unknown field"
        );
        assert!(
            decode(&to_bytes(&broken)).is_err(),
            "{file}: decodes with an unknown data field"
        );
    }
}
