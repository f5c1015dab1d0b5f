//! Property tests of the identifiers' and namespaces' text forms (see `crate::proptests`):
//! every ID round-trips through its hex and its JSON, and a key from outside is taken only in
//! its one spelling; a namespace name is accepted exactly when it is one safe path segment.

use proptest::prelude::*;

use super::*;
use crate::proptests::config;

/// The rule of the namespace docs, written plainly.
fn is_namespace_name(text: &str) -> bool {
    (1..=Namespace::MAX_LEN).contains(&text.len())
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_ids_round_trip_through_hex_and_json(bytes in any::<[u8; 32]>()) {
        let id = ActionId(bytes);
        let hex = id.to_hex();
        prop_assert_eq!(ActionId::from_key(&hex), Some(id));
        prop_assert_eq!(ActionId::from_hex(&hex.to_uppercase()), Some(id));
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<ActionId>(&json).unwrap(), id);
        if hex.bytes().any(|b| b.is_ascii_alphabetic()) {
            prop_assert_eq!(ActionId::from_key(&hex.to_uppercase()), None);
        }
    }

    #[test]
    fn prop_keys_from_outside_are_64_lowercase_hex_digits(text in prop_oneof!["[0-9a-fA-F]{62,66}", any::<String>()]) {
        let strict = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let key = OutputId::from_key(&text);
        prop_assert_eq!(key.is_some(), strict);
        if let Some(key) = key {
            prop_assert_eq!(key.to_hex(), text);
        }
    }

    #[test]
    fn prop_namespace_names_are_one_safe_path_segment(text in prop_oneof![
        "[A-Za-z0-9._-]{0,130}",
        "[A-Za-z0-9._/\\\\%:* -]{0,12}",
        any::<String>(),
    ]) {
        match Namespace::parse(&text) {
            Ok(name) => {
                prop_assert!(is_namespace_name(&text), "{:?} accepted", text);
                prop_assert_eq!(name.as_str(), text.as_str());
                prop_assert_eq!(name.path(), format!("ns/{text}"));
                prop_assert!(text != "." && text != ".." && !text.contains('/'));
            }
            Err(reason) => {
                prop_assert!(!is_namespace_name(&text), "{:?} refused: {}", text, reason);
                prop_assert!(reason.starts_with("namespace "));
            }
        }
    }
}
