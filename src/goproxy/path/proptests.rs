//! Property tests of module paths, versions and request paths (see `crate::proptests`),
//! beside the hand-written splices in `tests`: generated module paths and versions, in any
//! case, round-trip through the case encoding; every request built from them round-trips
//! through its path, with `!` spelled either way; every tile through its one path; and any
//! text is refused or parses to a request whose storage key keeps its contract.

use proptest::prelude::*;

use super::tests::assert_safe_key;
use super::*;
use crate::proptests::{config, mutate, mutations};

/// A module path as people write them: a host, then elements in any case, sometimes with a
/// major version; not every one is valid (a trailing dot, `com1`, `x~1`).
fn module_text() -> impl Strategy<Value = String> {
    (
        "[a-z0-9][a-z0-9-]{0,8}\\.[a-z]{2,5}",
        prop::collection::vec("[A-Za-z0-9][A-Za-z0-9._~-]{0,10}", 0..4),
        prop::option::of("/v[0-9]{1,2}"),
    )
        .prop_map(|(host, elements, major)| {
            let mut path = host;
            for element in elements {
                path.push('/');
                path.push_str(&element);
            }
            path.push_str(major.as_deref().unwrap_or(""));
            path
        })
}

/// A semantic version, sometimes short, with a prerelease or build suffix; a few not valid
/// (a prerelease number with a leading zero).
fn version_text() -> impl Strategy<Value = String> {
    "v(0|[1-9][0-9]{0,3})(\\.(0|[1-9][0-9]{0,3})(\\.(0|[1-9][0-9]{0,3})(-[0-9A-Za-z-]{1,6}(\\.[0-9A-Za-z-]{1,4}){0,2})?(\\+[0-9A-Za-z-]{1,6}|\\+incompatible)?)?)?"
}

fn sumdb_name() -> impl Strategy<Value = SumdbName> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,6}){1,3}"
        .prop_map(|name| SumdbName::parse(&name).unwrap())
}

fn tile() -> impl Strategy<Value = Tile> {
    (
        1..=30u8,
        prop::option::of(0..=63u8),
        prop_oneof![0..5000u64, 0..=i64::MAX as u64],
    )
        .prop_flat_map(|(height, level, index)| {
            (1..=(1u32 << height)).prop_map(move |width| Tile {
                height,
                level,
                index,
                width,
            })
        })
}

/// Every request kind that `module` and `version` make (those the rules allow).
fn requests(module: &ModulePath, version: &Version, name: &SumdbName, tile: Tile) -> Vec<Request> {
    let mut out = vec![
        Request::List {
            module: module.clone(),
        },
        Request::Latest {
            module: module.clone(),
        },
        Request::SumdbSupported { name: name.clone() },
        Request::SumdbLatest { name: name.clone() },
        Request::SumdbTile {
            name: name.clone(),
            tile,
        },
    ];
    if let Ok(revision) = Revision::parse(version.as_str()) {
        out.push(Request::Info {
            module: module.clone(),
            version: revision,
        });
    }
    if version.is_canonical() {
        out.push(Request::Mod {
            module: module.clone(),
            version: version.clone(),
        });
        out.push(Request::Zip {
            module: module.clone(),
            version: version.clone(),
        });
        out.push(Request::SumdbLookup {
            name: name.clone(),
            module: module.clone(),
            version: version.clone(),
        });
    }
    out
}

fn check_parsed(raw: &str) -> Result<(), TestCaseError> {
    if let Ok(request) = Request::parse(raw) {
        let key = request.storage_key();
        assert_safe_key(&key);
        prop_assert_eq!(Request::parse(&key), Ok(request));
        prop_assert_eq!(raw.replace("%21", "!"), key);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_module_paths_and_versions_round_trip_through_the_case_encoding(
        module in module_text(),
        version in version_text(),
    ) {
        if let Ok(path) = ModulePath::parse(&module) {
            let escaped = path.escape();
            prop_assert!(!escaped.bytes().any(|b| b.is_ascii_uppercase()));
            prop_assert_eq!(ModulePath::unescape(&escaped), Ok(path));
            if module.bytes().any(|b| b.is_ascii_uppercase()) {
                prop_assert!(ModulePath::unescape(&module).is_err());
            }
        }
        if let Ok(parsed) = Version::parse(&version) {
            prop_assert_eq!(Version::unescape(&parsed.escape()), Ok(parsed.clone()));
            prop_assert_eq!(Revision::parse(&version).is_ok(), parsed.is_canonical() || Query::parse(&version).is_ok());
        }
    }

    #[test]
    fn prop_requests_round_trip_through_their_paths(
        module in module_text(),
        version in version_text(),
        name in sumdb_name(),
        tile in tile(),
    ) {
        let (Ok(module), Ok(version)) = (ModulePath::parse(&module), Version::parse(&version)) else {
            return Ok(());
        };
        for request in requests(&module, &version, &name, tile) {
            let path = request.path();
            prop_assert_eq!(Request::parse(&path), Ok(request.clone()), "{}", path);
            // The go command's spelling of `!`.
            prop_assert_eq!(Request::parse(&path.replace('!', "%21")), Ok(request.clone()));
            assert_safe_key(&request.storage_key());
        }
    }

    #[test]
    fn prop_tiles_round_trip_through_their_one_path(tile in tile()) {
        let path = tile.path();
        prop_assert_eq!(Tile::parse(&path), Ok(tile));
        prop_assert_eq!(tile.is_partial(), u64::from(tile.width) != 1u64 << tile.height);
    }

    #[test]
    fn prop_damaged_request_paths_are_refused_or_keep_the_key_contract(
        module in module_text(),
        version in version_text(),
        name in sumdb_name(),
        tile in tile(),
        pick in any::<prop::sample::Index>(),
        mutations in mutations(),
    ) {
        let (Ok(module), Ok(version)) = (ModulePath::parse(&module), Version::parse(&version)) else {
            return Ok(());
        };
        let requests = requests(&module, &version, &name, tile);
        let path = pick.get(&requests).path();
        let damaged = String::from_utf8_lossy(&mutate(path.as_bytes(), &mutations)).into_owned();
        check_parsed(&damaged)?;
    }

    #[test]
    fn prop_any_text_is_refused_or_a_request(text in prop_oneof![
        any::<String>(),
        "[a-z0-9./@!%~+_-]{0,60}",
        "sumdb/[a-z.]{1,12}/tile/[0-9x./p]{0,30}",
    ]) {
        check_parsed(&text)?;
        let _ = ModulePath::parse(&text);
        let _ = Version::parse(&text);
        let _ = Query::parse(&text);
        let _ = SumdbName::parse(&text);
        let _ = Tile::parse(&text);
    }
}
