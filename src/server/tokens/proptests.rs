//! Property tests of the token file (see `crate::proptests`): any file of valid lines,
//! comments and blank lines reads back as its tokens; any text is read or refused, never a
//! panic, and a file read has no token shorter than the minimum; a glob matches exactly the
//! names a plain backtracking matcher says it does.

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, mutate, mutations};

/// A token: the characters of generated secrets (base64, hex, URL-safe).
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/=-]{16,48}"
}

fn glob_text() -> impl Strategy<Value = String> {
    "[a-z0-9_*-][a-z0-9._*-]{0,10}"
}

#[derive(Debug, Clone)]
struct Line {
    scope: Scope,
    token: String,
    globs: Option<Vec<String>>,
    comment: Option<String>,
}

fn line() -> impl Strategy<Value = Line> {
    (
        prop_oneof![Just(Scope::Read), Just(Scope::ReadWrite)],
        token(),
        prop::option::of(prop::collection::vec(glob_text(), 1..4)),
        prop::option::of("[ -~]{0,30}"),
    )
        .prop_map(|(scope, token, globs, comment)| Line {
            scope,
            token,
            globs,
            comment,
        })
}

fn write_line(line: &Line, space: &str) -> String {
    let scope = match line.scope {
        Scope::Read => "ro",
        Scope::ReadWrite => "rw",
    };
    let mut text = format!("{space}{scope}{space} {}", line.token);
    if let Some(globs) = &line.globs {
        text.push_str(&format!(" {space}namespaces={}", globs.join(",")));
    }
    if let Some(comment) = &line.comment {
        text.push_str(&format!(" #{comment}"));
    }
    text.push_str(space);
    text
}

/// Whether `glob` matches `name`, by trying every split at each `*`.
fn reference_match(glob: &[u8], name: &[u8]) -> bool {
    match glob.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| reference_match(rest, &name[skip..])),
        Some((c, rest)) => name.first() == Some(c) && reference_match(rest, &name[1..]),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_token_files_round_trip(
        lines in prop::collection::vec((line(), "[ \t]{0,2}", prop::option::of("#[ -~]{0,20}")), 0..8),
    ) {
        let mut text = String::new();
        for (line, space, note) in &lines {
            if let Some(note) = note {
                text.push_str(note);
                text.push('\n');
            }
            text.push_str(&write_line(line, space));
            text.push('\n');
        }
        let tokens = Tokens::parse_file(&text).unwrap();
        prop_assert_eq!(tokens.len(), lines.len());
        for ((token, scope, namespaces), (line, ..)) in tokens.entries.iter().zip(&lines) {
            prop_assert_eq!(token, line.token.as_bytes());
            prop_assert_eq!(*scope, line.scope);
            let expected = match &line.globs {
                None => Namespaces::All,
                Some(globs) => Namespaces::Matching(globs.iter().map(|g| Glob::parse(g).unwrap()).collect()),
            };
            prop_assert_eq!(namespaces, &expected);
        }
    }

    #[test]
    fn prop_any_token_file_is_read_or_refused(
        lines in prop::collection::vec(line(), 1..6),
        mutations in mutations(),
    ) {
        let text: String = lines.iter().map(|l| write_line(l, "") + "\n").collect();
        let damaged = String::from_utf8_lossy(&mutate(text.as_bytes(), &mutations)).into_owned();
        if let Ok(tokens) = Tokens::parse_file(&damaged) {
            for (token, _, _) in &tokens.entries {
                prop_assert!(token.len() >= MIN_TOKEN_LEN);
                prop_assert!(damaged.contains(std::str::from_utf8(token).unwrap()));
            }
        }
        let _ = Tokens::parse_list(&damaged);
    }

    #[test]
    fn prop_token_lists_round_trip(items in prop::collection::vec((any::<bool>(), token()), 0..6)) {
        let text: Vec<String> = items
            .iter()
            .map(|(rw, token)| format!("{}:{token}", if *rw { "rw" } else { "ro" }))
            .collect();
        let tokens = Tokens::parse_list(&text.join(",")).unwrap();
        prop_assert_eq!(tokens.len(), items.len());
        for (rw, token) in &items {
            let scope = if *rw { Scope::ReadWrite } else { Scope::Read };
            prop_assert!(matches!(tokens.access(token.as_bytes(), None), Access::Granted(s) if s >= scope));
        }
    }

    #[test]
    fn prop_globs_match_as_a_backtracking_matcher_does(
        glob in glob_text(),
        name in "[a-z0-9._-]{0,14}",
        fill in "[a-z0-9._-]{0,4}",
    ) {
        let parsed = Glob::parse(&glob).unwrap();
        prop_assert_eq!(
            parsed.matches(&name),
            reference_match(glob.as_bytes(), name.as_bytes()),
            "{} against {}", glob, name
        );
        // Each `*` filled in: a name the glob matches.
        let filled = glob.replace('*', &fill);
        prop_assert!(parsed.matches(&filled), "{} against {}", glob, filled);
    }
}
