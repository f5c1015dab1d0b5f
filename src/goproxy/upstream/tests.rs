use super::*;

fn url(text: &str) -> Upstream {
    Upstream::Url(text.to_owned())
}

fn parse(text: &str) -> Upstreams {
    Upstreams::parse(text, None).unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
}

#[test]
fn a_list_keeps_each_elements_separator() {
    let list = parse("https://a.example.com,https://b.example.com/go/|direct");
    assert_eq!(
        list.elements(),
        &[
            (url("https://a.example.com"), Fallback::NotFound),
            (url("https://b.example.com/go"), Fallback::AnyError),
            (Upstream::Direct, Fallback::Last),
        ]
    );
    assert_eq!(list.len(), 3);
    assert!(!list.is_empty());
    assert_eq!(list.get(2), Some(&Upstream::Direct));
    assert_eq!(list.get(3), None);

    assert_eq!(parse("off").elements(), &[(Upstream::Off, Fallback::Last)]);
    assert_eq!(
        parse("direct").elements(),
        &[(Upstream::Direct, Fallback::Last)]
    );
    assert_eq!(
        parse(" http://a.example.com:8080/ | off ").elements(),
        &[
            (url("http://a.example.com:8080"), Fallback::AnyError),
            (Upstream::Off, Fallback::Last),
        ]
    );
}

#[test]
fn urls_are_normalized_as_the_go_command_reads_them() {
    for (element, kept) in [
        ("https://proxy.example.com", "https://proxy.example.com"),
        ("https://proxy.example.com///", "https://proxy.example.com"),
        (
            "HTTP://Proxy.Example.com/Go/",
            "http://Proxy.Example.com/Go",
        ),
        // Without a scheme, as in the go command: https.
        ("proxy.example.com/go", "https://proxy.example.com/go"),
        ("localhost:3000", "https://localhost:3000"),
        ("http://[::1]:8080/mod/", "http://[::1]:8080/mod"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://my_host.example.com", "http://my_host.example.com"),
    ] {
        assert_eq!(parse(element).get(0), Some(&url(kept)), "{element}");
    }
}

#[test]
fn empty_lists_and_empty_elements_are_refused() {
    for text in ["", "   "] {
        assert_eq!(Upstreams::parse(text, None), Err(UpstreamError::Empty));
    }
    for (text, position) in [
        ("https://a.example.com,,direct", 2),
        ("https://a.example.com| |direct", 2),
        (",direct", 1),
        ("|direct", 1),
        ("https://a.example.com,", 2),
        ("https://a.example.com|", 2),
        (",", 1),
    ] {
        assert_eq!(
            Upstreams::parse(text, None),
            Err(UpstreamError::EmptyElement { position }),
            "{text:?}"
        );
    }
}

#[test]
fn only_http_and_https_urls_are_proxies() {
    for element in [
        "ftp://proxy.example.com",
        "file:///srv/goproxy",
        "file:/srv/goproxy",
        "/srv/goproxy",
        "proxy",
        "DIRECT",
        "Off",
        "https://",
        "https:///path",
        "https://user@",
        "https://proxy.example.com?x=1",
        "https://proxy.example.com/#x",
        "https://proxy example.com",
        "https://proxy.example.com\\x",
        "https://prox\u{e9}.example.com",
        "https://proxy.example.com:0",
        "https://proxy.example.com:65536",
        "https://proxy.example.com:",
        "https://proxy.example.com:http",
        "https://proxy.example.com:80:80",
        "https://[::1",
        "https://[::1]x",
        "https://[zz]",
        "https://proxy.example.com/a/../b",
        "https://proxy.example.com/./b",
    ] {
        let list = format!("{element},direct");
        assert!(
            matches!(
                Upstreams::parse(&list, None),
                Err(UpstreamError::Invalid { .. })
            ),
            "{element:?}: {:?}",
            Upstreams::parse(&list, None)
        );
    }
}

#[test]
fn nothing_may_follow_direct_or_off() {
    assert_eq!(
        Upstreams::parse("direct,https://a.example.com", None),
        Err(UpstreamError::AfterEnd {
            element: "https://a.example.com".into(),
            keyword: "direct",
        })
    );
    assert_eq!(
        Upstreams::parse("https://a.example.com|off|direct", None),
        Err(UpstreamError::AfterEnd {
            element: "direct".into(),
            keyword: "off",
        })
    );
}

#[test]
fn the_proxy_never_lists_itself() {
    let own = Some("http://cache.example.com:8080/mod");
    for element in [
        "http://cache.example.com:8080/mod",
        "http://cache.example.com:8080/mod/",
        "HTTP://CACHE.Example.COM:8080/mod",
        "http://user:pass@cache.example.com:8080/mod",
    ] {
        let list = format!("https://a.example.com,{element}|direct");
        assert!(
            matches!(
                Upstreams::parse(&list, own),
                Err(UpstreamError::SelfLoop { .. })
            ),
            "{element}"
        );
    }
    // Other places on the same host are other proxies.
    for element in [
        "https://cache.example.com:8080/mod",
        "http://cache.example.com/mod",
        "http://cache.example.com:8080",
        "http://cache.example.com:8080/mod/v2",
        "http://cache.example.com:8080/Mod",
    ] {
        assert!(Upstreams::parse(element, own).is_ok(), "{element}");
    }
    // A default port is the same place as none.
    assert!(matches!(
        Upstreams::parse(
            "https://cache.example.com:443/mod",
            Some("https://cache.example.com/mod/")
        ),
        Err(UpstreamError::SelfLoop { .. })
    ));
    assert!(matches!(
        Upstreams::parse(
            "cache.example.com/mod",
            Some("https://cache.example.com:443/mod")
        ),
        Err(UpstreamError::SelfLoop { .. })
    ));
    // Without the proxy's own URL, nothing is compared.
    assert!(Upstreams::parse("http://cache.example.com:8080/mod", None).is_ok());
    assert!(matches!(
        Upstreams::parse("direct", Some("ftp://cache.example.com")),
        Err(UpstreamError::SelfUrl { .. })
    ));
}

#[test]
fn outcomes_follow_the_go_commands_reading_of_a_status() {
    assert_eq!(Outcome::from_status(200), Outcome::Found);
    assert_eq!(Outcome::from_status(404), Outcome::NotFound);
    assert_eq!(Outcome::from_status(410), Outcome::NotFound);
    for status in [204, 301, 302, 400, 401, 403, 429, 500, 502, 503, 504] {
        assert_eq!(Outcome::from_status(status), Outcome::Failed, "{status}");
    }
}

#[test]
fn the_next_element_is_tried_by_the_go_commands_rule() {
    let list = parse("https://a.example.com,https://b.example.com|direct");
    let not_found = Outcome::from_status(404);
    let gone = Outcome::from_status(410);
    let server_error = Outcome::from_status(500);
    let network = Outcome::Failed;

    // After ',' only "not found" goes on.
    assert_eq!(list.next_after(0, &Outcome::Found), None);
    assert_eq!(list.next_after(0, &not_found), Some(1));
    assert_eq!(list.next_after(0, &gone), Some(1));
    assert_eq!(list.next_after(0, &server_error), None);
    assert_eq!(list.next_after(0, &network), None);
    // After '|' any failure goes on.
    assert_eq!(list.next_after(1, &Outcome::Found), None);
    assert_eq!(list.next_after(1, &not_found), Some(2));
    assert_eq!(list.next_after(1, &gone), Some(2));
    assert_eq!(list.next_after(1, &server_error), Some(2));
    assert_eq!(list.next_after(1, &network), Some(2));
    // direct ends the list, and an index past it is nothing.
    for outcome in [Outcome::Found, not_found, server_error] {
        assert_eq!(list.next_after(2, &outcome), None);
        assert_eq!(list.next_after(3, &outcome), None);
    }

    // The last element, whatever it answered, has nothing after it.
    let pair = parse("https://a.example.com|https://b.example.com");
    assert_eq!(pair.next_after(0, &network), Some(1));
    assert_eq!(pair.next_after(1, &network), None);
    assert_eq!(pair.next_after(1, &not_found), None);

    // off is reached like any element; the caller fails the request there.
    let off = parse("https://a.example.com,off");
    assert_eq!(off.next_after(0, &gone), Some(1));
    assert_eq!(off.get(1), Some(&Upstream::Off));
    assert_eq!(off.next_after(0, &server_error), None);
    assert_eq!(parse("off").next_after(0, &not_found), None);
}

#[test]
fn passwords_never_show() {
    let list = parse("https://user:secret@a.example.com/go|user:secret@b.example.com,direct");
    assert_eq!(
        list.get(0),
        Some(&url("https://user:secret@a.example.com/go")),
        "the URL itself keeps the password for the requests"
    );
    assert_eq!(list.get(1), Some(&url("https://user:secret@b.example.com")));
    let shown = format!("{list:?} {} {}", list.get(0).unwrap(), list.get(1).unwrap());
    assert!(!shown.contains("secret"), "{shown}");
    assert!(
        shown.contains("https://user:xxxxx@a.example.com/go"),
        "{shown}"
    );

    for text in [
        "ftp://user:secret@a.example.com",
        "https://user:secret@a.example.com?x",
        "direct,https://user:secret@a.example.com",
    ] {
        let message = Upstreams::parse(text, None).unwrap_err().to_string();
        assert!(!message.contains("secret"), "{message}");
        assert!(message.contains("user:xxxxx@"), "{message}");
    }
    let message = Upstreams::parse(
        "http://user:secret@cache.example.com/mod",
        Some("http://cache.example.com/mod"),
    )
    .unwrap_err()
    .to_string();
    assert!(!message.contains("secret"), "{message}");
    let message = Upstreams::parse("direct", Some("ftp://user:secret@cache.example.com"))
        .unwrap_err()
        .to_string();
    assert!(!message.contains("secret"), "{message}");
}

#[test]
fn private_patterns_match_path_prefixes_element_by_element() {
    use super::matches_prefix_patterns as m;
    assert!(m("example.com/private", "example.com/private"));
    assert!(m("example.com/private", "example.com/private/tools/v2"));
    assert!(!m("example.com/private", "example.com/privateer"));
    assert!(!m("example.com/private", "example.com"));
    assert!(m("*.corp.example.com", "git.corp.example.com/team/x"));
    assert!(!m("*.corp.example.com", "corp.example.com/x"));
    assert!(m("other.org,example.com/*/x", "example.com/team/x/y"));
    assert!(m("example.com/p?iv", "example.com/priv"));
    assert!(m("example.com/[a-c]x", "example.com/bx"));
    assert!(!m("example.com/[^a-c]x", "example.com/bx"));
    assert!(m(" example.com/ , ", "example.com/a"));
    assert!(!m("", "example.com/a"));
    assert!(!m(",,", "example.com/a"));
    assert!(!m("example.com/[a", "example.com/a"));
}

#[test]
fn a_list_displays_as_goproxy_writes_it_without_passwords() {
    let list = Upstreams::parse(
        "https://u:secret@a.example/go|http://b.example,direct",
        None,
    )
    .unwrap();
    assert_eq!(
        list.to_string(),
        "https://u:xxxxx@a.example/go|http://b.example,direct"
    );
}

#[test]
fn a_list_then_another_on_failure() {
    let server = Upstreams::parse("http://goremotecache:t0k@127.0.0.1:8321/mod", None).unwrap();
    let own = Upstreams::parse("https://proxy.example.com,direct", None).unwrap();
    let both = server.then_on_failure(own.clone());
    assert_eq!(
        both.to_string(),
        "http://goremotecache:xxxxx@127.0.0.1:8321/mod|https://proxy.example.com,direct"
    );
    // The first element's failure goes on to the second.
    assert_eq!(both.next_after(0, &Outcome::from_status(500)), Some(1));
    let ended = Upstreams::parse("off", None).unwrap();
    assert_eq!(ended.then_on_failure(own).to_string(), "off");
}
