//! Property tests of the option values clap does not parse itself, the placeholders and the
//! namespace options (see `crate::proptests`): every size, bound, switch and fraction written
//! as a user would reads back as its value; any text is read or refused, never a panic; a
//! template expands to its pieces; `--namespace` and `--read-namespaces` keep valid names
//! once each, in order.

use std::time::Duration;

use proptest::prelude::*;

use super::super::template::{Source, expand_from};
use super::super::values::{MaxSize, parse_fraction, parse_idle_exit, parse_max_size};
use super::*;
use crate::proptests::config;

const UNITS: [(&str, u64); 10] = [
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
];

/// A fixed environment for templates.
struct Env;

impl Source for Env {
    fn var(&self, name: &str) -> Option<String> {
        (name == "SET").then(|| "set-value".to_owned())
    }

    fn go_env(&self, name: &str) -> Result<String, String> {
        Ok(format!("go-{name}"))
    }
}

/// A piece of a template and what it expands to.
fn piece() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        "[^{}]{0,8}".prop_map(|text| (text.clone(), text)),
        Just(("{GOOS}".to_owned(), "go-GOOS".to_owned())),
        Just(("{GOARCH}".to_owned(), "go-GOARCH".to_owned())),
        Just(("{GOVERSION}".to_owned(), "go-GOVERSION".to_owned())),
        Just(("{env.SET}".to_owned(), "set-value".to_owned())),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,12}"
}

/// A list entry: a name, an empty entry, or one with spaces around it.
fn list_item() -> impl Strategy<Value = String> {
    prop_oneof![
        name(),
        Just(String::new()),
        name().prop_map(|n| format!(" {n} ")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_sizes_round_trip(number in prop_oneof![any::<u64>(), 0..5000u64], unit in 0..UNITS.len(), space in " ?") {
        let (suffix, scale) = UNITS[unit];
        let text = format!("{number}{space}{suffix}");
        match number.checked_mul(scale) {
            Some(bytes) => {
                prop_assert_eq!(parse_size(&text), Ok(bytes));
                let max = parse_max_size(&text);
                if bytes == 0 {
                    prop_assert!(max.is_err());
                } else {
                    prop_assert_eq!(max, Ok(MaxSize::Bytes(bytes)));
                }
            }
            None => prop_assert!(parse_size(&text).unwrap_err().contains("too large")),
        }
    }

    #[test]
    fn prop_bounds_round_trip(secs in 0..10_000_000u64, nanos in 0..1_000_000_000u32) {
        let duration = Duration::new(secs, nanos);
        let text = humantime::format_duration(duration).to_string();
        if duration.is_zero() {
            prop_assert!(parse_bound(&text).is_err());
        } else {
            prop_assert_eq!(parse_bound(&text), Ok(duration));
            prop_assert_eq!(parse_idle_exit(&format!(" {text} ")), Ok(duration));
        }
    }

    #[test]
    fn prop_fractions_and_switches_round_trip(p in 0.0..=1.0f64, on in any::<bool>(), upper in any::<bool>()) {
        prop_assert_eq!(parse_fraction(&p.to_string()).map(|f| f.0), Ok(p));
        let word = if on { "true" } else { "off" };
        let word = if upper { word.to_uppercase() } else { word.to_owned() };
        prop_assert_eq!(parse_switch(&word), Ok(on));
    }

    #[test]
    fn prop_any_value_text_is_read_or_refused(text in any::<String>(), digits in "[0-9]{0,30}[ a-zA-Z]{0,4}") {
        for text in [&text, &digits] {
            if let Ok(size) = parse_size(text) {
                prop_assert!(text.trim().starts_with(|c: char| c.is_ascii_digit()), "{:?} is {}", text, size);
            }
            if let Ok(bound) = parse_bound(text) {
                prop_assert!(!bound.is_zero());
            }
            let _ = parse_idle_exit(text);
            let _ = parse_max_size(text);
            let _ = parse_switch(text);
            if let Ok(p) = parse_fraction(text) {
                prop_assert!((0.0..=1.0).contains(&p.0));
            }
        }
    }

    #[test]
    fn prop_templates_expand_to_their_pieces(pieces in prop::collection::vec(piece(), 0..6)) {
        let template: String = pieces.iter().map(|(t, _)| t.as_str()).collect();
        let expanded: String = pieces.iter().map(|(_, e)| e.as_str()).collect();
        prop_assert_eq!(expand_from("s3-prefix", &template, &Env).unwrap(), expanded);
    }

    #[test]
    fn prop_any_template_expands_or_is_refused(text in "[a-zA-Z{}.]{0,20}", any_text in any::<String>()) {
        for text in [&text, &any_text] {
            if let Ok(expanded) = expand_from("s3-prefix", text, &Env) {
                prop_assert!(!expanded.contains(['{', '}']), "{:?}", expanded);
                if !text.contains(['{', '}']) {
                    prop_assert_eq!(&expanded, text);
                }
            }
        }
    }

    #[test]
    fn prop_namespace_options_keep_valid_names_once_in_order(
        own in prop::option::of(name()),
        reads in prop::collection::vec(list_item(), 0..6),
    ) {
        let args = NamespaceArgs {
            namespace: own.clone(),
            read_namespaces: Some(reads.join(",")),
        };
        let plan = namespace_plan(&args).unwrap();
        prop_assert_eq!(plan.own.as_ref().map(Namespace::as_str), own.as_deref());
        let mut expected: Vec<&str> = Vec::new();
        for item in &reads {
            let item = item.trim();
            if !item.is_empty() && Some(item) != own.as_deref() && !expected.contains(&item) {
                expected.push(item);
            }
        }
        let got: Vec<&str> = plan.reads.iter().map(Namespace::as_str).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn prop_namespace_options_refuse_what_is_not_a_name(bad in "[^{}]{0,20}") {
        let args = NamespaceArgs { namespace: Some(bad.clone()), read_namespaces: None };
        match namespace_plan(&args) {
            Ok(plan) => {
                let name = bad.trim();
                prop_assert_eq!(plan.own.as_ref().map(Namespace::as_str), (!name.is_empty()).then_some(name));
            }
            Err(err) => prop_assert!(matches!(err, ConfigError::Namespace { .. }), "{}", err),
        }
    }
}
