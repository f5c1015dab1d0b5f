use std::collections::HashMap;

use super::*;

fn module(path: &str) -> ModulePath {
    ModulePath::parse(path).unwrap()
}

fn version(text: &str) -> Version {
    Version::parse(text).unwrap()
}

fn sumdb() -> SumdbName {
    SumdbName::parse("sum.example.com").unwrap()
}

fn parse(path: &str) -> Request {
    Request::parse(path).unwrap_or_else(|e| panic!("{path:?} refused: {e}"))
}

fn refused(path: &str) -> PathError {
    match Request::parse(path) {
        Ok(request) => panic!("{path:?} accepted as {request:?}"),
        Err(e) => e,
    }
}

#[test]
fn module_paths_follow_check_path() {
    for good in [
        "github.com/Azure/azure-sdk",
        "golang.org/x/mod",
        "example.com",
        "example.com/a/v2",
        "example.com/a/v10",
        "example.com/a/v1x",
        "example.com/v2/sub",
        "example.com/x~y",
        "example.com/A_b-c.d",
        "example.com/x.v2",
        "my-host.example.com/x",
        "1.2.3.4/x",
        "gopkg.in/yaml.v2",
        "gopkg.in/yaml.v0",
        "gopkg.in/check.v1",
        "gopkg.in/user/pkg.v3",
        "gopkg.in/yaml.v3-unstable",
        "example.com/com10",
        "example.com/console",
        "example.com/a~b1",
        "example.com/x~1y",
    ] {
        assert_eq!(module(good).as_str(), good);
    }
    for bad in [
        "",
        "/example.com",
        "example.com/",
        "example.com//x",
        "example/x",
        "-example.com/x",
        "Example.com/x",
        "exa_mple.com/x",
        "exa~mple.com/x",
        "example.com/./x",
        "example.com/../x",
        "example.com/...",
        "example.com/.x",
        "example.com/x.",
        ".example.com/x",
        "example.com/a+b",
        "example.com/a b",
        "example.com/a@b",
        "example.com/a!b",
        "example.com/a%41",
        "example.com/a\\b",
        "example.com/ä",
        "example.com/com1",
        "example.com/NUL",
        "example.com/nul.txt",
        "example.com/Lpt9.x",
        "example.com/abc~1",
        "example.com/ABC~12.d",
        "example.com/x/v1",
        "example.com/x/v0",
        "example.com/x/v02",
        "example.com/x/v2.1",
        "gopkg.in/yaml",
        "gopkg.in/yaml.v01",
        "gopkg.in/yaml.v",
    ] {
        let err = ModulePath::parse(bad).unwrap_err();
        assert!(
            matches!(err, PathError::ModulePath { ref path, .. } if path == bad),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn module_paths_round_trip_through_the_case_encoding() {
    for (path, escaped) in [
        ("github.com/Azure/azure-sdk", "github.com/!azure/azure-sdk"),
        ("github.com/BurntSushi/toml", "github.com/!burnt!sushi/toml"),
        ("example.com/ABC/xYz", "example.com/!a!b!c/x!yz"),
        ("golang.org/x/mod", "golang.org/x/mod"),
    ] {
        let parsed = module(path);
        assert_eq!(parsed.escape(), escaped);
        assert_eq!(ModulePath::unescape(escaped).unwrap(), parsed);
    }
    // Paths that differ only in case have different escaped forms.
    assert_ne!(
        module("example.com/Foo").escape(),
        module("example.com/foo").escape()
    );
    for bad in [
        "github.com/Azure/azure-sdk",
        "github.com/!Azure/azure-sdk",
        "github.com/!/x",
        "github.com/x!",
        "github.com/!1x",
        "github.com/!!x",
        "github.com/!-x",
        "example.com/!a+b",
    ] {
        assert!(
            matches!(ModulePath::unescape(bad), Err(PathError::ModulePath { .. })),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn versions_are_go_semver_and_canonical_is_the_one_spelling() {
    for (text, canonical) in [
        ("v1.2.3", true),
        ("v0.0.0", true),
        ("v10.20.30", true),
        ("v1.2.3-pre", true),
        ("v1.0.0-RC1", true),
        ("v1.2.3-0.a-b.10", true),
        ("v0.0.0-20190101000000-abcdef123456", true),
        ("v2.0.0+incompatible", true),
        ("v2.0.0-rc.1+incompatible", true),
        ("v1", false),
        ("v1.2", false),
        ("v1.2.3+meta", false),
        ("v1.2.3+01.x-y", false),
    ] {
        let parsed = version(text);
        assert_eq!(parsed.is_canonical(), canonical, "{text}");
        assert_eq!(parsed.as_str(), text);
    }
    for bad in [
        "",
        "v",
        "1.2.3",
        "V1.2.3",
        "v01.2.3",
        "v1.02.3",
        "v1.2.03",
        "v1.2.3.4",
        "v1.2-pre",
        "v1+meta",
        "v1.2.3-",
        "v1.2.3-01",
        "v1.2.3-a..b",
        "v1.2.3-a_b",
        "v1.2.3+",
        "v1.2.3+a..b",
        "v1.2.3 ",
        "v-1.2.3",
    ] {
        assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn versions_and_queries_round_trip_through_the_case_encoding() {
    let rc = version("v1.0.0-RC1");
    assert_eq!(rc.escape(), "v1.0.0-!r!c1");
    assert_eq!(Version::unescape("v1.0.0-!r!c1").unwrap(), rc);
    assert_eq!(version("v1.2.3").escape(), "v1.2.3");
    for bad in ["v1.0.0-RC1", "v1.0.0-!", "v1.0.0-!1", "v1.0.0-!!r"] {
        assert!(Version::unescape(bad).is_err(), "{bad:?} accepted");
    }
    let branch = Query::parse("Feature_X").unwrap();
    assert_eq!(branch.escape(), "!feature_!x");
    assert_eq!(Query::unescape("!feature_!x").unwrap(), branch);
    assert!(Query::unescape("Feature").is_err());
}

#[test]
fn queries_are_conservative_and_never_canonical_versions() {
    for good in [
        "master",
        "latest",
        "abcdef123456",
        "release-1",
        "v1.2",
        "v1.2.3+meta",
        "a~b",
        "x.y",
    ] {
        assert_eq!(Query::parse(good).unwrap().as_str(), good);
    }
    for bad in [
        "",
        ".hidden",
        "x.",
        "..",
        "feature/x",
        "a b",
        "a%b",
        "a@b",
        "a!b",
        "con",
        "aux.x",
        "v1.2.3",
        "v2.0.0+incompatible",
        &"a".repeat(MAX_ELEMENT + 1),
    ] {
        assert!(Query::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        Revision::parse("v1.2.3").unwrap(),
        Revision::Version(version("v1.2.3"))
    );
    assert_eq!(
        Revision::parse("v1.2").unwrap(),
        Revision::Query(Query::parse("v1.2").unwrap())
    );
}

#[test]
fn every_module_request_kind_parses_from_a_realistic_path() {
    let azure = module("github.com/Azure/azure-sdk");
    assert_eq!(
        parse("github.com/!azure/azure-sdk/@v/list"),
        Request::List {
            module: azure.clone()
        }
    );
    assert_eq!(
        parse("golang.org/x/mod/@v/v0.17.0.info"),
        Request::Info {
            module: module("golang.org/x/mod"),
            version: Revision::Version(version("v0.17.0")),
        }
    );
    assert_eq!(
        parse("github.com/!azure/azure-sdk/@v/master.info"),
        Request::Info {
            module: azure.clone(),
            version: Revision::Query(Query::parse("master").unwrap()),
        }
    );
    assert_eq!(
        parse("github.com/!azure/azure-sdk/@v/v1.2.info"),
        Request::Info {
            module: azure.clone(),
            version: Revision::Query(Query::parse("v1.2").unwrap()),
        }
    );
    assert_eq!(
        parse("github.com/!azure/azure-sdk/@v/v1.0.0-!r!c1.mod"),
        Request::Mod {
            module: azure.clone(),
            version: version("v1.0.0-RC1"),
        }
    );
    assert_eq!(
        parse("example.com/x/v2/@v/v2.3.4.zip"),
        Request::Zip {
            module: module("example.com/x/v2"),
            version: version("v2.3.4"),
        }
    );
    assert_eq!(
        parse("example.com/old/@v/v3.0.0+incompatible.zip"),
        Request::Zip {
            module: module("example.com/old"),
            version: version("v3.0.0+incompatible"),
        }
    );
    assert_eq!(
        parse("gopkg.in/yaml.v3/@latest"),
        Request::Latest {
            module: module("gopkg.in/yaml.v3")
        }
    );
}

#[test]
fn the_go_commands_percent_escaped_bang_is_the_same_request() {
    // The go command escapes each segment with url.PathEscape, which sends '!' as %21.
    for (sent, literal) in [
        (
            "github.com/%21azure/azure-sdk/@v/v1.0.0-%21r%21c1.mod",
            "github.com/!azure/azure-sdk/@v/v1.0.0-!r!c1.mod",
        ),
        (
            "github.com/%21burnt%21sushi/toml/@v/list",
            "github.com/!burnt!sushi/toml/@v/list",
        ),
        (
            "sumdb/sum.example.com/lookup/github.com/%21azure/x@v1.0.0",
            "sumdb/sum.example.com/lookup/github.com/!azure/x@v1.0.0",
        ),
    ] {
        let request = parse(sent);
        assert_eq!(request, parse(literal));
        assert_eq!(request.storage_key(), literal);
    }
}

#[test]
fn every_sumdb_request_kind_parses_from_a_realistic_path() {
    assert_eq!(
        parse("sumdb/sum.example.com/supported"),
        Request::SumdbSupported { name: sumdb() }
    );
    assert_eq!(
        parse("sumdb/sum.example.com/latest"),
        Request::SumdbLatest { name: sumdb() }
    );
    assert_eq!(
        parse("sumdb/sum.example.com/lookup/github.com/!azure/azure-sdk@v1.2.3"),
        Request::SumdbLookup {
            name: sumdb(),
            module: module("github.com/Azure/azure-sdk"),
            version: version("v1.2.3"),
        }
    );
    for (path, height, level, index, width) in [
        ("tile/8/0/000", 8, Some(0), 0, 256),
        ("tile/8/0/007", 8, Some(0), 7, 256),
        ("tile/8/1/x001/x234/567", 8, Some(1), 1_234_567, 256),
        ("tile/8/2/x001/000", 8, Some(2), 1000, 256),
        ("tile/8/data/000", 8, None, 0, 256),
        ("tile/8/0/012.p/5", 8, Some(0), 12, 5),
        ("tile/8/data/x001/234.p/255", 8, None, 1234, 255),
        ("tile/1/63/000.p/1", 1, Some(63), 0, 1),
        ("tile/30/0/999", 30, Some(0), 999, 1 << 30),
    ] {
        let tile = Tile {
            height,
            level,
            index,
            width,
        };
        assert_eq!(
            parse(&format!("sumdb/sum.example.com/{path}")),
            Request::SumdbTile {
                name: sumdb(),
                tile
            },
            "{path}"
        );
        assert_eq!(tile.path(), path);
        assert_eq!(tile.is_partial(), width != 1 << height, "{path}");
    }
    let largest = Tile {
        height: 8,
        level: Some(0),
        index: i64::MAX as u64,
        width: 256,
    };
    assert_eq!(Tile::parse(&largest.path()).unwrap(), largest);
    // A hand-made tile too tall for any log is partial, not a shift overflow.
    let tall = Tile {
        height: 70,
        ..largest
    };
    assert!(tall.is_partial());
    assert!(Tile::parse(&tall.path()).is_err());
}

#[test]
fn traversal_and_strange_characters_are_refused_before_anything_is_read() {
    for (path, want) in [
        ("", PathError::Empty),
        ("../etc/passwd", PathError::Traversal),
        ("github.com/x/../y/@v/list", PathError::Traversal),
        ("github.com/x/./@v/list", PathError::Traversal),
        ("github.com/x/@v/..", PathError::Traversal),
        ("/github.com/x/@v/list", PathError::Traversal),
        ("github.com//x/@v/list", PathError::Traversal),
        ("github.com/x/@v/list/", PathError::Traversal),
        ("sumdb//latest", PathError::Traversal),
        ("sumdb/sum.example.com/tile/8/0//000", PathError::Traversal),
        ("github.com/x\0/@v/list", PathError::Char('\0')),
        ("github.com/x\\..\\y/@v/list", PathError::Char('\\')),
        ("github.com/x\n/@v/list", PathError::Char('\n')),
        ("github.com/x\t/@v/list", PathError::Char('\t')),
        ("github.com/é/@v/list", PathError::Char('é')),
        ("%2e%2e/x/@v/list", PathError::Percent("%2e".into())),
        (
            "github.com/x/%2E%2E/@v/list",
            PathError::Percent("%2E".into()),
        ),
        (
            "github.com/x%2f..%2fy/@v/list",
            PathError::Percent("%2f".into()),
        ),
        ("github.com/x/@v/list%00", PathError::Percent("%00".into())),
        (
            "github.com/%2521x/@v/list",
            PathError::Percent("%25".into()),
        ),
        ("github.com/x/@v/list%2", PathError::Percent("%2".into())),
        ("github.com/x/@v/list%", PathError::Percent("%".into())),
        ("github.com/x/@v/list%5c", PathError::Percent("%5c".into())),
    ] {
        assert_eq!(refused(path), want, "{path:?}");
    }
}

#[test]
fn bad_module_paths_and_case_encodings_are_refused() {
    for path in [
        "github.com/Azure/azure-sdk/@v/list",
        "github.com/!Azure/azure-sdk/@v/list",
        "github.com/!/x/@v/list",
        "github.com/!1x/@v/list",
        "github.com/x!/@v/list",
        "github.com/x%21/@v/list",
        "example/x/@v/list",
        "example.com/x/v1/@latest",
        "example.com/a+b/@latest",
        "example.com/.x/@latest",
        "example.com/com1/@v/list",
        "sumdb.example.com/x@v1/@v/list",
        "sumdb/sum.example.com/lookup/github.com/Azure/x@v1.0.0",
    ] {
        assert!(
            matches!(refused(path), PathError::ModulePath { .. }),
            "{path:?}"
        );
    }
    for path in [
        "github.com/x/@v/v1.0.0-RC1.mod",
        "github.com/x/@v/v1.0.0-!R.mod",
        "github.com/x/@v/v1.0.0-!.zip",
        "github.com/x/@v/Master.info",
        "github.com/x/@v/!.info",
        "github.com/x/@v/.info",
    ] {
        assert!(
            matches!(refused(path), PathError::Version { .. }),
            "{path:?}"
        );
    }
}

#[test]
fn unknown_endpoints_are_refused() {
    for path in [
        "github.com/x",
        "github.com/x/@v",
        "github.com/x/@v/v1.0.0",
        "github.com/x/@v/v1.0.0.tar",
        "github.com/x/@v/v1.0.0.INFO",
        "github.com/x/@V/list",
        "github.com/x/@v/list/x",
        "github.com/x/@v/a/b.info",
        "github.com/x/@latest/x",
        "github.com/x/@latest.info",
        "github.com/x/@foo",
        "sumdb",
        "sumdb/sum.example.com",
        "sumdb/sum.example.com/foo",
        "sumdb/sum.example.com/supported/x",
        "sumdb/sum.example.com/lookup/github.com/x",
        "sumdb/sum.example.com/tiles/8/0/000",
    ] {
        assert!(
            matches!(refused(path), PathError::Unknown(_)),
            "{path:?}: {:?}",
            Request::parse(path)
        );
    }
}

#[test]
fn mod_zip_and_lookups_need_a_canonical_version() {
    for path in [
        "github.com/x/@v/v1.2.mod",
        "github.com/x/@v/v1.zip",
        "github.com/x/@v/v1.2.3+meta.zip",
        "sumdb/sum.example.com/lookup/github.com/x@v1.2",
    ] {
        assert!(
            matches!(refused(path), PathError::NotCanonical { .. }),
            "{path:?}"
        );
    }
    for path in [
        "github.com/x/@v/master.mod",
        "github.com/x/@v/latest.zip",
        "sumdb/sum.example.com/lookup/github.com/x@master",
        "sumdb/sum.example.com/lookup/github.com/x@v1.0.0/go.mod",
        "sumdb/sum.example.com/lookup/github.com/x@v1.0.0@v1.0.0",
    ] {
        assert!(
            matches!(refused(path), PathError::Version { .. }),
            "{path:?}: {:?}",
            Request::parse(path)
        );
    }
}

#[test]
fn bad_sumdb_names_are_refused() {
    for name in [
        "SUM.example.com",
        "localhost",
        "-a.example.com",
        "a-.example.com",
        "a_b.example.com",
        "a..b",
        ".example.com",
        "example.com.",
        "sum.example.com:443",
        "sum!a.example.com",
        &format!("{}.example.com", "a".repeat(64)),
    ] {
        let path = format!("sumdb/{name}/latest");
        assert!(
            matches!(refused(&path), PathError::SumdbName { .. }),
            "{path:?}: {:?}",
            Request::parse(&path)
        );
    }
    let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(61));
    assert_eq!(longest.len(), SumdbName::MAX_LEN);
    assert!(SumdbName::parse(&longest).is_ok());
    assert!(SumdbName::parse(&format!("a{longest}")).is_err());
}

#[test]
fn bad_tile_paths_are_refused() {
    for tile in [
        "tile/8/0/7",
        "tile/8/0/0007",
        "tile/8/00/000",
        "tile/08/0/000",
        "tile/+8/0/000",
        "tile/0/0/000",
        "tile/31/0/000",
        "tile/8/-1/000",
        "tile/8/64/000",
        "tile/8/0",
        "tile/8/0/abc",
        "tile/8/0/1000",
        "tile/8/0/x000/001",
        "tile/8/0/x001",
        "tile/8/0/000/x001",
        "tile/8/0/x001/x002",
        "tile/8/0/000.p/0",
        "tile/8/0/000.p/256",
        "tile/8/0/000.p/05",
        "tile/8/0/000.p/x",
        "tile/8/0/000.p",
        "tile/8/0/.p/5",
        "tile/8/0/000.q/5",
        "tile/8/data",
        "tile/8/DATA/000",
        "tile/8/0/x009/x223/x372/x036/x854/x775/808",
        "tile/8/0/x999/x999/x999/x999/x999/x999/x999/999",
    ] {
        let path = format!("sumdb/sum.example.com/{tile}");
        assert_eq!(refused(&path), PathError::Tile(tile.into()), "{path:?}");
    }
}

#[test]
fn over_long_paths_and_elements_are_refused() {
    let mut long = String::from("example.com");
    while long.len() <= MAX_REQUEST_PATH {
        long.push_str("/abcdefgh");
    }
    let long = format!("{long}/@v/list");
    assert!(matches!(refused(&long), PathError::TooLong { .. }));

    let fits = format!("example.com/{}/@v/list", "a".repeat(MAX_ELEMENT));
    assert!(Request::parse(&fits).is_ok());
    let element = format!("example.com/{}/@v/list", "a".repeat(MAX_ELEMENT + 1));
    assert_eq!(
        refused(&element),
        PathError::ElementTooLong {
            len: MAX_ELEMENT + 1,
            max: MAX_ELEMENT
        }
    );
    // The bound is on the raw path: %21 escapes count before they are decoded.
    let escaped = format!("example.com/{}", "%21a/".repeat(MAX_REQUEST_PATH / 5)) + "@v/list";
    assert!(escaped.len() > MAX_REQUEST_PATH);
    assert!(matches!(refused(&escaped), PathError::TooLong { .. }));
}

#[test]
fn each_kind_is_classified_for_caching() {
    for (path, caching) in [
        ("example.com/x/@v/list", Caching::Mutable),
        ("example.com/x/@latest", Caching::Mutable),
        ("example.com/x/@v/v1.2.3.info", Caching::Immutable),
        ("example.com/x/@v/v1.0.0-!r!c1.info", Caching::Immutable),
        ("example.com/x/@v/master.info", Caching::Mutable),
        ("example.com/x/@v/latest.info", Caching::Mutable),
        ("example.com/x/@v/v1.2.info", Caching::Mutable),
        ("example.com/x/@v/v1.2.3+meta.info", Caching::Mutable),
        ("example.com/x/@v/v1.2.3.mod", Caching::Immutable),
        ("example.com/x/@v/v1.2.3.zip", Caching::Immutable),
        ("sumdb/sum.example.com/supported", Caching::Local),
        ("sumdb/sum.example.com/latest", Caching::Mutable),
        (
            "sumdb/sum.example.com/lookup/example.com/x@v1.2.3",
            Caching::Immutable,
        ),
        ("sumdb/sum.example.com/tile/8/0/000", Caching::Immutable),
        ("sumdb/sum.example.com/tile/8/0/000.p/9", Caching::Immutable),
        ("sumdb/sum.example.com/tile/8/data/001", Caching::Immutable),
    ] {
        assert_eq!(parse(path).caching(), caching, "{path}");
    }
    // A hand-made Info with a non-canonical Version is still mutable.
    let odd = Request::Info {
        module: module("example.com/x"),
        version: Revision::Version(version("v1.2")),
    };
    assert_eq!(odd.caching(), Caching::Mutable);
}

/// Whether `key` keeps the storage key's contract (see `Request::storage_key`).
pub(super) fn assert_safe_key(key: &str) {
    assert!(!key.is_empty() && key.len() <= MAX_REQUEST_PATH, "{key:?}");
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~+!@/".contains(&b)),
        "{key:?}"
    );
    for elem in key.split('/') {
        assert!(
            !elem.is_empty() && elem != "." && elem != ".." && elem.len() <= MAX_ELEMENT,
            "{key:?}"
        );
    }
}

/// Every request kind for many modules and revisions, including ones that differ only in
/// case, and the sumdb kinds for two databases.
fn generated_requests() -> Vec<Request> {
    let modules = [
        "example.com",
        "example.com/x",
        "example.com/X",
        "example.com/x/v2",
        "example.com/x/y",
        "example.com/x/Y",
        "example.com/xy",
        "example.com/x/v2/sub",
        "Example.com",
        "github.com/Azure/azure-sdk",
        "github.com/azure/azure-sdk",
        "github.com/AZURE/azure-sdk",
        "gopkg.in/yaml.v3",
        "gopkg.in/yaml.v3-unstable",
        "sumdb.example.com/lookup",
        "example.com/a~b_c-d.e",
    ];
    let versions = [
        "v0.0.0",
        "v1.2.3",
        "v1.0.0-rc1",
        "v1.0.0-RC1",
        "v1.0.0-Rc1",
        "v2.0.0+incompatible",
        "v0.0.0-20190101000000-abcdef123456",
    ];
    let queries = [
        "master",
        "Master",
        "latest",
        "list",
        "v1.2",
        "v1.2.3+meta",
        "abc123",
        "x.mod",
    ];
    let names = ["sum.example.com", "sum.example.org"];
    let tiles = [
        "tile/8/0/000",
        "tile/8/0/001",
        "tile/8/1/000",
        "tile/8/data/000",
        "tile/8/0/000.p/1",
        "tile/8/0/000.p/2",
        "tile/4/0/000",
        "tile/8/0/x001/000",
    ];
    let mut requests = Vec::new();
    for path in modules {
        let Ok(module) = ModulePath::parse(path) else {
            continue;
        };
        requests.push(Request::List {
            module: module.clone(),
        });
        requests.push(Request::Latest {
            module: module.clone(),
        });
        for text in versions {
            let v = version(text);
            requests.push(Request::Info {
                module: module.clone(),
                version: Revision::Version(v.clone()),
            });
            requests.push(Request::Mod {
                module: module.clone(),
                version: v.clone(),
            });
            requests.push(Request::Zip {
                module: module.clone(),
                version: v.clone(),
            });
            for name in names {
                requests.push(Request::SumdbLookup {
                    name: SumdbName::parse(name).unwrap(),
                    module: module.clone(),
                    version: v.clone(),
                });
            }
        }
        for text in queries {
            requests.push(Request::Info {
                module: module.clone(),
                version: Revision::Query(Query::parse(text).unwrap()),
            });
        }
    }
    for name in names {
        let name = SumdbName::parse(name).unwrap();
        requests.push(Request::SumdbSupported { name: name.clone() });
        requests.push(Request::SumdbLatest { name: name.clone() });
        for tile in tiles {
            requests.push(Request::SumdbTile {
                name: name.clone(),
                tile: Tile::parse(tile).unwrap(),
            });
        }
    }
    requests
}

#[test]
fn storage_keys_are_distinct_safe_and_parse_back() {
    let requests = generated_requests();
    assert!(requests.len() > 600, "{}", requests.len());
    let mut seen: HashMap<String, Request> = HashMap::new();
    for request in requests {
        let key = request.storage_key();
        assert_safe_key(&key);
        assert_eq!(key, request.path());
        assert_eq!(Request::parse(&key).as_ref(), Ok(&request), "{key:?}");
        if let Some(other) = seen.insert(key.clone(), request.clone()) {
            panic!("{request:?} and {other:?} share the key {key:?}");
        }
    }
}

/// A small deterministic generator (xorshift64*), so the fuzz loop needs no dependency and
/// fails the same way every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[(self.next() % choices.len() as u64) as usize]
    }
}

#[test]
fn mutated_paths_either_are_refused_or_give_a_safe_key_that_parses_back() {
    // Real requests, and the tricks a hostile path would splice into them.
    let modules = [
        "example.com/x",
        "github.com/!azure/azure-sdk",
        "github.com/%21burnt%21sushi/toml",
        "gopkg.in/yaml.v3",
        "example.com/a/v2",
    ];
    let suffixes = [
        "/@v/list",
        "/@latest",
        "/@v/v1.2.3.info",
        "/@v/v1.0.0-!r!c1.mod",
        "/@v/v2.0.0+incompatible.zip",
        "/@v/master.info",
        "/@v/v1.2.info",
    ];
    let sumdb = [
        "sumdb/sum.example.com/supported",
        "sumdb/sum.example.com/latest",
        "sumdb/sum.example.com/lookup/example.com/x@v1.2.3",
        "sumdb/sum.example.com/tile/8/0/x001/234.p/5",
        "sumdb/sum.example.com/tile/8/data/000",
    ];
    let tricks = [
        "/", "..", ".", "!", "%21", "%2e", "%2f", "%", "\\", "\0", "A", "@", "@v", "x", "~1", "+",
        "-", "com1", "/..", "//", "\u{e9}", ".p", "/x001", "0", "9", "v2",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    let mut keys: HashMap<String, Request> = HashMap::new();
    for _ in 0..50_000 {
        let mut path = if rng.next().is_multiple_of(4) {
            rng.pick(&sumdb).to_owned()
        } else {
            format!("{}{}", rng.pick(&modules), rng.pick(&suffixes))
        };
        for _ in 0..rng.next() % 3 {
            let at = (rng.next() % (path.len() as u64 + 1)) as usize;
            if !path.is_char_boundary(at) {
                continue;
            }
            if rng.next().is_multiple_of(2) {
                path.insert_str(at, rng.pick(&tricks));
            } else {
                let end = (at + 1 + (rng.next() % 3) as usize).min(path.len());
                if path.is_char_boundary(end) {
                    path.replace_range(at..end, "");
                }
            }
        }
        let Ok(request) = Request::parse(&path) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let key = request.storage_key();
        assert_safe_key(&key);
        assert_eq!(Request::parse(&key).as_ref(), Ok(&request), "{path:?}");
        // The raw path and the key differ only in how '!' is spelled.
        assert_eq!(path.replace("%21", "!"), key, "{path:?}");
        if let Some(other) = keys.insert(key.clone(), request.clone()) {
            assert_eq!(other, request, "two requests share the key {key:?}");
        }
    }
    assert!(
        accepted > 10_000 && refused > 10_000,
        "{accepted} accepted, {refused} refused"
    );
    assert!(keys.len() > 1000, "only {} distinct requests", keys.len());
}
