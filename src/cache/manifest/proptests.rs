//! Property tests of prefetch manifests (see `crate::proptests`): any manifest round-trips
//! through its stored form, in or out of namespaces, whatever its key's text; damaged stored
//! forms and damaged text are refused or read as a manifest that itself round-trips; the
//! decompressed text is capped.

use std::io::Write;

use proptest::prelude::*;

use super::*;
use crate::proptests::{config_scaled, mutate, mutations};

fn namespace() -> impl Strategy<Value = Namespace> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}".prop_map(|name| Namespace::parse(&name).unwrap())
}

/// A home namespace and entries, each in the home or in another namespace.
fn manifest() -> impl Strategy<Value = (Option<Namespace>, Vec<ManifestEntry>)> {
    let entry = (
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u8>(),
        prop::option::of(namespace()),
    );
    (
        prop::option::of(namespace()),
        prop::collection::vec(entry, 0..40),
    )
        .prop_map(|(home, entries)| {
            let mut seen = HashSet::new();
            let entries = entries
                .into_iter()
                .filter(|(action, ..)| seen.insert(*action))
                .map(|(action, size, age, other)| ManifestEntry {
                    action: ActionId(action),
                    size,
                    age,
                    // An entry is in the home namespace or in a named one.
                    namespace: other.or_else(|| home.clone()),
                })
                .collect();
            (home, entries)
        })
}

/// What made the key: names of letters, values of any text (control characters and all).
fn source() -> impl Strategy<Value = KeySource> {
    prop::collection::vec(("[a-zA-Z_-]{1,12}", any::<String>()), 0..5)
        .prop_map(|parts| KeySource { parts })
}

fn compress(text: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(text, 1).expect("compressing in memory")
}

fn check_read(manifest: &Manifest, home: Option<&Namespace>) -> Result<(), TestCaseError> {
    let mut seen = HashSet::new();
    prop_assert!(manifest.entries.len() <= MAX_ENTRIES);
    prop_assert!(manifest.entries.iter().all(|e| seen.insert(e.action)));
    // What was read is a manifest like any other: it round-trips.
    let again = Manifest::decode(&manifest.encode(&KeySource::explicit("k"), home), home)
        .expect("a manifest read back");
    prop_assert_eq!(&again.entries, &manifest.entries);
    Ok(())
}

proptest! {
    // Each case compresses and decompresses.
    #![proptest_config(config_scaled(2))]

    #[test]
    fn prop_manifests_round_trip((home, entries) in manifest(), source in source(), written in 0..u64::from(u32::MAX)) {
        let manifest = Manifest { entries, repaired: false, written: None };
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(written);
        let bytes = manifest.encode_at(&source, home.as_ref(), time);
        let read = Manifest::decode(&bytes, home.as_ref()).unwrap();
        prop_assert_eq!(read, Manifest { written: Some(written), ..manifest });
    }

    #[test]
    fn prop_damaged_stored_manifests_are_refused_or_read_whole(
        (home, entries) in manifest(),
        mutations in mutations(),
        text in any::<bool>(),
    ) {
        let manifest = Manifest { entries, repaired: false, written: None };
        let bytes = manifest.encode(&KeySource::explicit("key"), home.as_ref());
        // Damage the compressed bytes, or the text inside (which then decompresses).
        let damaged = if text {
            let mut plain = Vec::new();
            zstd::stream::read::Decoder::new(&bytes[..]).unwrap().read_to_end(&mut plain).unwrap();
            compress(&mutate(&plain, &mutations))
        } else {
            mutate(&bytes, &mutations)
        };
        if let Ok(read) = Manifest::decode(&damaged, home.as_ref()) {
            check_read(&read, home.as_ref())?;
        }
    }

    #[test]
    fn prop_any_text_is_a_manifest_or_refused(lines in prop::collection::vec("[0-9a-f #=.\\-A-Za-z]{0,80}", 0..10), magic in any::<bool>()) {
        let mut text = if magic { format!("{MAGIC}\n") } else { String::new() };
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        if let Ok(read) = Manifest::decode(&compress(text.as_bytes()), None) {
            prop_assert!(magic || lines.first().is_some_and(|l| l == MAGIC));
            check_read(&read, None)?;
        }
    }
}

/// The decompressed text is capped at `MAX_TEXT`: a small frame that decompresses past it
/// is refused, not read cut short (where a cut at a line's end would read a part of a
/// manifest as the whole).
#[test]
fn a_manifest_past_the_text_cap_is_refused() {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.write_all(format!("{MAGIC}\n").as_bytes()).unwrap();
    let line = format!("{} 1 0\n", ActionId([1; 32]).to_hex());
    let comment = [b"# padding ".as_slice(), &[b'x'; 1 << 20], b"\n"].concat();
    let mut written = MAGIC.len() as u64 + 1 + line.len() as u64;
    encoder.write_all(line.as_bytes()).unwrap();
    while written <= MAX_TEXT {
        encoder.write_all(&comment).unwrap();
        written += comment.len() as u64;
    }
    let bytes = encoder.finish().unwrap();
    assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
    let err = Manifest::decode(&bytes, None).unwrap_err();
    assert!(err.contains("larger than"), "{err}");
}
