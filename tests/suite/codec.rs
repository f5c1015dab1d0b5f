//! The wire codec on its own: framing, bodies, and every kind of bad input.

use std::io::{self, Cursor};

use goremotecache::cacheprog::wire::{
    BodyError, Command, Incoming, Request, RequestError, RequestReader,
};
use goremotecache::ids::{ActionId, OutputId};

use crate::support::{action, encode_request, pseudo_random, put_bytes};

/// Reads every request in `input`, collecting bodies in memory.
fn read_all(input: &[u8]) -> Vec<Incoming<Vec<u8>>> {
    let mut reader = RequestReader::new(Cursor::new(input.to_vec()));
    let mut out = Vec::new();
    while let Some(incoming) = reader
        .next_request(&mut || Ok(Vec::new()), &mut |sink: Vec<u8>, _| Ok(sink))
        .unwrap()
    {
        out.push(incoming);
    }
    out
}

fn get(id: i64, n: u32) -> Vec<u8> {
    encode_request(
        id,
        &Command::Get {
            action_id: action(n),
        },
    )
}

fn expect_request(incoming: &Incoming<Vec<u8>>) -> (&Request, Option<&Vec<u8>>) {
    match incoming {
        Incoming::Request(request, body) => (request, body.as_ref()),
        Incoming::Bad(err) => panic!("expected a request, got {err}"),
    }
}

fn expect_bad(incoming: &Incoming<Vec<u8>>) -> &RequestError {
    match incoming {
        Incoming::Bad(err) => err,
        Incoming::Request(request, _) => panic!("expected an error, got {request:?}"),
    }
}

#[test]
fn blank_lines_and_spaces_between_requests_are_skipped() {
    let mut input = b"\n\n  \r\n".to_vec();
    input.extend(get(1, 1));
    input.extend(b"\n\n\n");
    input.extend(get(2, 2));
    let got = read_all(&input);
    assert_eq!(got.len(), 2);
    assert_eq!(expect_request(&got[0]).0.id, 1);
    assert_eq!(
        expect_request(&got[1]).0.command,
        Command::Get {
            action_id: action(2)
        }
    );
}

#[test]
fn a_put_with_an_empty_body_has_no_body_line() {
    let empty = OutputId::of(b"");
    let mut input = put_bytes(1, action(1), empty, b"");
    input.extend(get(2, 1));
    let got = read_all(&input);
    assert_eq!(got.len(), 2);
    let (request, body) = expect_request(&got[0]);
    assert_eq!(
        request.command,
        Command::Put {
            action_id: action(1),
            output_id: empty,
            body_size: 0
        }
    );
    assert!(body.is_none());
    assert_eq!(expect_request(&got[1]).0.id, 2);
}

#[test]
fn bodies_are_decoded_and_the_next_request_follows() {
    let data = pseudo_random(1, 100_003);
    let mut input = put_bytes(1, action(1), OutputId::of(&data), &data);
    input.extend(get(2, 1));
    let got = read_all(&input);
    assert_eq!(expect_request(&got[0]).1.unwrap(), &data);
    assert_eq!(expect_request(&got[1]).0.id, 2);
}

#[test]
fn object_id_is_accepted_as_output_id() {
    let data = b"old go".to_vec();
    let output = OutputId::of(&data);
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let line = format!(
        "{{\"ID\":3,\"Command\":\"put\",\"ActionID\":\"{}\",\"ObjectID\":\"{}\",\"BodySize\":6}}\n\n\"{}\"\n",
        b64(&action(9).0),
        b64(&output.0),
        b64(&data)
    );
    let got = read_all(line.as_bytes());
    let (request, body) = expect_request(&got[0]);
    assert_eq!(
        request.command,
        Command::Put {
            action_id: action(9),
            output_id: output,
            body_size: 6
        }
    );
    assert_eq!(body.unwrap(), &data);
}

#[test]
fn malformed_json_is_reported_and_reading_goes_on() {
    let mut input = b"{\"ID\":1,\"Command\":\n".to_vec();
    input.extend(b"not json at all\n");
    input.extend(get(3, 1));
    let got = read_all(&input);
    assert_eq!(got.len(), 3);
    assert!(matches!(expect_bad(&got[0]), RequestError::Malformed(_)));
    assert!(matches!(expect_bad(&got[1]), RequestError::Malformed(_)));
    assert_eq!(expect_bad(&got[1]).id(), None);
    assert_eq!(expect_request(&got[2]).0.id, 3);
}

#[test]
fn an_unknown_command_is_answered_by_its_id() {
    let got = read_all(b"{\"ID\":5,\"Command\":\"frobnicate\"}\n\n");
    let err = expect_bad(&got[0]);
    assert_eq!(err.id(), Some(5));
    assert!(
        err.to_string().contains("unknown command \"frobnicate\""),
        "{err}"
    );
}

#[test]
fn missing_or_bad_ids_are_errors_with_the_request_id() {
    let cases: [(&[u8], &str); 5] = [
        (b"{\"ID\":1,\"Command\":\"get\"}\n", "missing ActionID"),
        (b"{\"ID\":2,\"Command\":\"get\",\"ActionID\":\"AAEC\"}\n", "ActionID has 3 bytes"),
        (b"{\"ID\":3,\"Command\":\"get\",\"ActionID\":\"%%%\"}\n", "ActionID is not base64"),
        (
            b"{\"ID\":4,\"Command\":\"put\",\"ActionID\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"}\n",
            "missing OutputID",
        ),
        (b"{\"ID\":5,\"Command\":\"get\",\"ActionID\":7}\n", "invalid type"),
    ];
    for (line, reason) in cases {
        let got = read_all(line);
        let err = expect_bad(&got[0]);
        assert!(err.id().is_some(), "{err}");
        assert!(err.to_string().contains(reason), "{err} lacks {reason:?}");
    }
}

#[test]
fn a_request_without_an_id_cannot_be_answered() {
    let got = read_all(b"{\"Command\":\"get\"}\n");
    let err = expect_bad(&got[0]);
    assert_eq!(err.id(), None);
}

/// Every broken body is refused, and the request after it is still read.
#[test]
fn broken_bodies_are_refused_and_the_stream_stays_in_step() {
    let data = pseudo_random(2, 3000);
    let id = OutputId::of(&data);
    let good = put_bytes(1, action(1), id, &data);
    let header_len = good.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let (header, body_line) = good.split_at(header_len);
    let b64_body = &body_line[1..body_line.len() - 2];

    let truncated = [header, b"\"", &b64_body[..1000], b"\n"].concat();
    let eof = [header, b"\"", &b64_body[..1000]].concat();
    let invalid = [
        header,
        b"\"",
        &b64_body[..100],
        b"!!!!",
        &b64_body[104..],
        b"\"\n",
    ]
    .concat();
    let wrong_size = put_bytes(1, action(1), id, &data[..2999]);
    let wrong_size = {
        // The body of 2,999 bytes announced as 3,000.
        let text = String::from_utf8(wrong_size).unwrap();
        text.replace("\"BodySize\":2999", "\"BodySize\":3000")
            .into_bytes()
    };
    let wrong_hash = put_bytes(1, action(1), OutputId::of(b"other"), &data);
    let missing = header.to_vec();
    let trailing = [header, b"\"", b64_body, b"\"xyz\n"].concat();

    type Check = fn(&BodyError) -> bool;
    let cases: [(&str, Vec<u8>, Check); 7] = [
        ("truncated", truncated, |e| {
            matches!(e, BodyError::Truncated)
        }),
        ("end of input", eof, |e| matches!(e, BodyError::Truncated)),
        ("invalid base64", invalid, |e| {
            matches!(e, BodyError::InvalidBase64(_))
        }),
        ("wrong BodySize", wrong_size, |e| {
            matches!(
                e,
                BodyError::SizeMismatch {
                    expected: 3000,
                    actual: 2999
                }
            )
        }),
        ("wrong OutputID", wrong_hash, |e| {
            matches!(e, BodyError::HashMismatch { .. })
        }),
        ("missing", missing, |e| {
            matches!(e, BodyError::Missing(3000))
        }),
        ("trailing garbage", trailing, |e| {
            matches!(e, BodyError::TrailingGarbage)
        }),
    ];
    for (name, mut input, check) in cases {
        let ends_early = name == "end of input";
        if !ends_early {
            input.extend(get(2, 1));
        }
        let got = read_all(&input);
        match expect_bad(&got[0]) {
            RequestError::BadBody { id: 1, reason } => assert!(check(reason), "{name}: {reason}"),
            other => panic!("{name}: {other}"),
        }
        if !ends_early {
            assert_eq!(got.len(), 2, "{name}: the next request was lost");
            assert_eq!(expect_request(&got[1]).0.id, 2, "{name}");
        }
    }
}

#[test]
fn a_body_line_without_its_put_is_skipped() {
    let mut input = b"{\"ID\":1,\"Command\":\"put\",\"BodySize\":3,\n\n\"YWJj\"\n".to_vec();
    input.extend(get(2, 1));
    let got = read_all(&input);
    // The broken put line, then its body, which belongs to nothing.
    assert!(matches!(expect_bad(&got[0]), RequestError::Malformed(_)));
    assert!(matches!(expect_bad(&got[1]), RequestError::StrayBody));
    assert_eq!(expect_request(&got[2]).0.id, 2);
}

#[test]
fn an_invalid_put_that_announced_a_body_has_its_body_skipped() {
    let mut input =
        b"{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"AAEC\",\"OutputID\":\"AAEC\",\"BodySize\":3}\n\n\"YWJj\"\n"
            .to_vec();
    input.extend(get(2, 1));
    let got = read_all(&input);
    assert_eq!(got.len(), 2);
    assert_eq!(expect_bad(&got[0]).id(), Some(1));
    assert_eq!(expect_request(&got[1]).0.id, 2);
}

#[test]
fn an_overlong_line_is_skipped_whole() {
    let mut input = vec![b'{'; 200_000];
    input.push(b'\n');
    input.extend(get(2, 1));
    let got = read_all(&input);
    assert!(matches!(expect_bad(&got[0]), RequestError::LineTooLong));
    assert_eq!(expect_request(&got[1]).0.id, 2);
}

#[test]
fn a_sink_that_cannot_be_created_still_consumes_the_body() {
    let data = pseudo_random(3, 5000);
    let mut input = put_bytes(1, action(1), OutputId::of(&data), &data);
    input.extend(get(2, 1));
    let mut reader = RequestReader::new(Cursor::new(input));
    let mut fail = || Err::<Vec<u8>, _>(io::Error::other("disk on fire"));
    let mut keep = |sink: Vec<u8>, _| Ok(sink);
    let first = reader.next_request(&mut fail, &mut keep).unwrap().unwrap();
    match first {
        Incoming::Bad(RequestError::BadBody {
            id: 1,
            reason: BodyError::Store(err),
        }) => assert!(err.to_string().contains("disk on fire")),
        other => panic!("{other:?}"),
    }
    let second = reader.next_request(&mut fail, &mut keep).unwrap().unwrap();
    assert!(matches!(
        second,
        Incoming::Request(Request { id: 2, .. }, None)
    ));
}

#[test]
fn a_sink_that_fails_midway_is_a_store_error() {
    struct Full(usize);
    impl io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 + buf.len() > 10_000 {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let data = pseudo_random(4, 300_000);
    let mut input = put_bytes(1, action(1), OutputId::of(&data), &data);
    input.extend(get(2, 1));
    let mut reader = RequestReader::new(Cursor::new(input));
    let mut make = || Ok(Full(0));
    let mut keep = |_: Full, _| Ok(());
    let first = reader.next_request(&mut make, &mut keep).unwrap().unwrap();
    assert!(matches!(
        first,
        Incoming::Bad(RequestError::BadBody {
            reason: BodyError::Store(_),
            ..
        })
    ));
    let second = reader.next_request(&mut make, &mut keep).unwrap().unwrap();
    assert!(matches!(
        second,
        Incoming::Request(Request { id: 2, .. }, None)
    ));
}

#[test]
fn ids_print_as_hex() {
    let id = ActionId([0xab; 32]);
    assert_eq!(id.to_hex(), "ab".repeat(32));
    assert_eq!(ActionId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(ActionId::from_hex("abc"), None);
}
