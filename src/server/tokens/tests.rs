//! The token file's lines, the namespace globs, and what a token may do where.

use super::*;

const A: &[u8] = b"aaaaaaaaaaaaaaaaaaaa";
const B: &[u8] = b"bbbbbbbbbbbbbbbbbbbb";

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn glob(text: &str) -> Glob {
    Glob::parse(text).unwrap()
}

#[test]
fn parses_files_and_lists() {
    let tokens = Tokens::parse_file(
        "# comment\n\nrw aaaaaaaaaaaaaaaaaaaa # main branch\nro bbbbbbbbbbbbbbbbbbbb\n",
    )
    .unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.access(A, None), Access::Granted(Scope::ReadWrite));
    assert_eq!(tokens.access(B, None), Access::Granted(Scope::Read));
    assert_eq!(
        tokens.access(B, Some(&ns("anything"))),
        Access::Granted(Scope::Read),
        "no namespaces= is every namespace"
    );
    assert_eq!(tokens.access(b"bbbbbbbbbbbbbbbbbbb", None), Access::Unknown);
    assert_eq!(tokens.access(b"", None), Access::Unknown);
    let list = Tokens::parse_list("ro:cccccccccccccccccccc, rw:dddddddddddddddddddd").unwrap();
    assert_eq!(
        list.access(b"dddddddddddddddddddd", Some(&ns("main"))),
        Access::Granted(Scope::ReadWrite)
    );
}

#[test]
fn refuses_bad_lines_with_their_number() {
    let err =
        Tokens::parse_file("rw aaaaaaaaaaaaaaaaaaaa\nadmin bbbbbbbbbbbbbbbbbbbb\n").unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    assert!(Tokens::parse_file("rw short").is_err());
    assert!(Tokens::parse_list("aaaaaaaaaaaaaaaaaaaa").is_err());
    assert_eq!(
        format!(
            "{:?}",
            Tokens::parse_list("rw:aaaaaaaaaaaaaaaaaaaa").unwrap()
        ),
        "Tokens(1 known)"
    );
}

#[test]
fn a_line_takes_namespaces_and_a_comment_and_nothing_else() {
    let tokens = Tokens::parse_file(
        "rw aaaaaaaaaaaaaaaaaaaa namespaces=main,release-* # CI\n\
         ro bbbbbbbbbbbbbbbbbbbb namespaces=*\n",
    )
    .unwrap();
    assert_eq!(
        tokens.access(A, Some(&ns("release-1.2"))),
        Access::Granted(Scope::ReadWrite)
    );
    assert_eq!(tokens.access(A, Some(&ns("pr-1"))), Access::Outside);
    assert_eq!(tokens.access(A, None), Access::Outside);
    assert_eq!(tokens.access(B, None), Access::Granted(Scope::Read));
    assert_eq!(
        tokens.access(B, Some(&ns("pr-1"))),
        Access::Granted(Scope::Read)
    );
    for (line, says) in [
        // A typo must not leave an unscoped token.
        ("namespace=main", "\"namespace=main\" after the token"),
        ("namespaces", "\"namespaces\" after the token"),
        ("main branch", "\"main\" after the token"),
        ("namespaces=", "at least one glob"),
        ("namespaces=a,,b", "1 to 128 characters"),
        ("namespaces=a/b", "'/' is not allowed"),
        ("namespaces=.x", "must not start with '.'"),
        ("namespaces=a namespaces=b", "given twice"),
        ("namespaces=a?", "'?' is not allowed"),
    ] {
        let text = format!("# tokens\nrw aaaaaaaaaaaaaaaaaaaa {line}\n");
        let err = Tokens::parse_file(&text).unwrap_err();
        assert!(err.starts_with("line 2: "), "{line}: {err}");
        assert!(err.contains(says), "{line}: {err}");
        assert!(!err.contains("aaaaaaaaaaaaaaaaaaaa"), "the token in {err}");
    }
    let long = format!("rw aaaaaaaaaaaaaaaaaaaa namespaces={}", "x".repeat(129));
    assert!(Tokens::parse_file(&long).is_err());
}

#[test]
fn a_token_listed_twice_gets_the_widest_line_that_covers_the_namespace() {
    let tokens = Tokens::parse_file(
        "ro aaaaaaaaaaaaaaaaaaaa namespaces=*\nrw aaaaaaaaaaaaaaaaaaaa namespaces=pr-*\n",
    )
    .unwrap();
    assert_eq!(
        tokens.access(A, Some(&ns("pr-3"))),
        Access::Granted(Scope::ReadWrite)
    );
    assert_eq!(
        tokens.access(A, Some(&ns("main"))),
        Access::Granted(Scope::Read)
    );
    assert_eq!(tokens.access(B, Some(&ns("main"))), Access::Unknown);
}

#[test]
fn globs_match_runs_of_characters_within_a_name() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("main", &["main"], &["mai", "main2", "xmain", ""]),
        ("*", &["a", "main", "pr-1"], &[]),
        ("pr-*", &["pr-", "pr-1", "pr-123"], &["pr", "xpr-1", "PR-1"]),
        ("*-rc", &["1.2-rc", "-rc"], &["1.2-rc1", "rc"]),
        ("a*a", &["aa", "aba", "abca"], &["a", "ab"]),
        ("r*-*-x", &["r1-2-x", "r--x", "ra-b-c-x"], &["r1-x", "r-x"]),
        ("*.*", &["1.2", "a..b"], &["12"]),
        ("a**b", &["ab", "axb"], &["ba"]),
    ];
    for (pattern, yes, no) in cases {
        let g = glob(pattern);
        for name in *yes {
            assert!(g.matches(name), "{pattern} should match {name:?}");
        }
        for name in *no {
            assert!(!g.matches(name), "{pattern} should not match {name:?}");
        }
    }
}

#[test]
fn only_the_glob_star_covers_the_paths_without_a_namespace() {
    let list = |text: &str| Namespaces::parse(text).unwrap();
    assert!(Namespaces::All.cover(None));
    assert!(list("*").cover(None));
    assert!(list("main,*").cover(None));
    assert!(!list("*-x").cover(None));
    assert!(!list("main").cover(None));
    assert!(list("main,pr-*").cover(Some(&ns("pr-9"))));
    assert!(!list("main,pr-*").cover(Some(&ns("release"))));
    assert!(Namespaces::parse("").is_err());
}
