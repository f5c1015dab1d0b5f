//! Property tests of the GOCACHEPROG wire codec (see `crate::proptests`): a stream of
//! requests written as the go command writes them reads back as the same requests and bodies
//! however its bytes arrive; a damaged stream gives requests or errors, never a panic or a
//! hang, and a body is only ever handed over verified; a response is one line whatever its
//! text.

use std::io::{self, BufRead, Read};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::proptests::{config, cuts, lying_len, mutate, mutations, pieces};

/// A request and, for a put, its body.
#[derive(Debug, Clone)]
struct Sent {
    id: i64,
    command: Command,
    body: Vec<u8>,
    /// Go 1.23 and older name the output `ObjectID`.
    object_id: bool,
}

fn sent() -> impl Strategy<Value = Sent> {
    let ids = any::<i64>();
    prop_oneof![
        (ids, any::<[u8; 32]>()).prop_map(|(id, a)| Sent {
            id,
            command: Command::Get {
                action_id: ActionId(a)
            },
            body: Vec::new(),
            object_id: false,
        }),
        (
            ids,
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..300),
            any::<bool>()
        )
            .prop_map(|(id, a, body, object_id)| Sent {
                id,
                command: Command::Put {
                    action_id: ActionId(a),
                    output_id: OutputId::of(&body),
                    body_size: body.len() as u64,
                },
                body,
                object_id,
            }),
        ids.prop_map(|id| Sent {
            id,
            command: Command::Close,
            body: Vec::new(),
            object_id: false,
        }),
    ]
}

/// The request line (and body line) as the go command writes them, each followed by a
/// blank line, with `gap` more white space after.
fn encode(sent: &Sent, gap: &str) -> Vec<u8> {
    let mut value = serde_json::Map::new();
    value.insert("ID".into(), sent.id.into());
    match &sent.command {
        Command::Get { action_id } => {
            value.insert("Command".into(), "get".into());
            value.insert("ActionID".into(), B64.encode(action_id.0).into());
        }
        Command::Put {
            action_id,
            output_id,
            body_size,
        } => {
            value.insert("Command".into(), "put".into());
            value.insert("ActionID".into(), B64.encode(action_id.0).into());
            let name = if sent.object_id {
                "ObjectID"
            } else {
                "OutputID"
            };
            value.insert(name.into(), B64.encode(output_id.0).into());
            if *body_size > 0 {
                value.insert("BodySize".into(), (*body_size).into());
            }
        }
        Command::Close => {
            value.insert("Command".into(), "close".into());
        }
    }
    let mut out = serde_json::to_vec(&value).expect("requests serialize");
    out.extend_from_slice(b"\n\n");
    if !sent.body.is_empty() {
        out.push(b'"');
        out.extend_from_slice(B64.encode(&sent.body).as_bytes());
        out.extend_from_slice(b"\"\n\n");
    }
    out.extend_from_slice(gap.as_bytes());
    out
}

fn stream() -> impl Strategy<Value = (Vec<Sent>, Vec<u8>)> {
    prop::collection::vec((sent(), "[ \n\t\r]{0,3}"), 0..8).prop_map(|requests| {
        let bytes = requests
            .iter()
            .flat_map(|(sent, gap)| encode(sent, gap))
            .collect();
        (requests.into_iter().map(|(sent, _)| sent).collect(), bytes)
    })
}

/// A reader that hands over its input in the given pieces, one `fill_buf` at a time (as a
/// pipe does), empty pieces skipped.
struct Pieces<'a> {
    pieces: Vec<&'a [u8]>,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], cuts: &[Index]) -> Self {
        let mut pieces: Vec<&[u8]> = pieces(bytes, cuts)
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        pieces.reverse();
        Self { pieces }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Pieces<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.pieces.last().copied().unwrap_or(&[]))
    }

    fn consume(&mut self, n: usize) {
        if let Some(last) = self.pieces.last_mut() {
            *last = &last[n..];
            if last.is_empty() {
                self.pieces.pop();
            }
        }
    }
}

/// Reads every request, bodies into memory; checks that each call makes progress, so that
/// a stream cannot make the reader loop.
fn read_all(input: impl BufRead, len: usize) -> Vec<Incoming<Vec<u8>>> {
    let mut reader = RequestReader::new(input);
    let mut out = Vec::new();
    while let Some(incoming) = reader
        .next_request(&mut || Ok(Vec::new()), &mut |sink: Vec<u8>, _| Ok(sink))
        .expect("reading from memory")
    {
        out.push(incoming);
        assert!(
            out.len() <= len,
            "more requests than bytes: the reader loops"
        );
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_requests_round_trip_however_the_bytes_arrive((sent, bytes) in stream(), cuts in cuts()) {
        let read = read_all(Pieces::new(&bytes, &cuts), bytes.len());
        prop_assert_eq!(read.len(), sent.len());
        for (incoming, sent) in read.iter().zip(&sent) {
            match incoming {
                Incoming::Request(request, body) => {
                    prop_assert_eq!(request.id, sent.id);
                    prop_assert_eq!(&request.command, &sent.command);
                    let body = body.clone().unwrap_or_default();
                    prop_assert_eq!(&body, &sent.body);
                }
                Incoming::Bad(err) => prop_assert!(false, "{:?} was refused: {}", sent, err),
            }
        }
    }

    #[test]
    fn prop_damaged_streams_give_requests_or_errors(
        (_, bytes) in stream(),
        mutations in mutations(),
        cuts in cuts(),
    ) {
        let damaged = mutate(&bytes, &mutations);
        for incoming in read_all(Pieces::new(&damaged, &cuts), damaged.len()) {
            if let Incoming::Request(request, body) = incoming {
                match (request.command, body) {
                    // A body is handed over only once its size and hash are checked.
                    (Command::Put { output_id, body_size, .. }, Some(body)) => {
                        prop_assert_eq!(body.len() as u64, body_size);
                        prop_assert_eq!(OutputId::of(&body), output_id);
                    }
                    (Command::Put { body_size, .. }, None) => prop_assert_eq!(body_size, 0),
                    (_, body) => prop_assert!(body.is_none()),
                }
            }
        }
    }

    #[test]
    fn prop_a_put_that_lies_about_its_body_size_is_refused_by_its_id(
        id in any::<i64>(),
        claimed in lying_len(),
        body in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        prop_assume!(claimed != body.len() as u64);
        let line = format!(
            "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{claimed}}}\n\n\"{}\"\n",
            B64.encode([1u8; 32]),
            B64.encode(OutputId::of(&body).0),
            B64.encode(&body),
        );
        let next = "{\"ID\":99,\"Command\":\"close\"}\n";
        let bytes = [line.as_bytes(), next.as_bytes()].concat();
        let mut read = read_all(&bytes[..], bytes.len());
        if claimed == 0 {
            // A put of no body (the go command sends no body line then): its body line is a
            // stray one, skipped.
            prop_assert!(matches!(read.remove(1), Incoming::Bad(RequestError::StrayBody)));
        }
        prop_assert_eq!(read.len(), 2, "{:?}", read);
        // Refused (a size over i64 is not JSON's i64, a smaller or larger one does not match
        // the body), by its ID where the line parses; nothing of the claim was allocated, and
        // the stream stays in step.
        match &read[0] {
            Incoming::Request(Request { command: Command::Put { body_size: 0, .. }, .. }, None)
                if claimed == 0 => {}
            Incoming::Bad(err) => {
                if claimed <= i64::MAX as u64 {
                    prop_assert_eq!(err.id(), Some(id));
                }
            }
            other => prop_assert!(false, "accepted: {:?}", other),
        }
        let closed = matches!(
            &read[1],
            Incoming::Request(Request { id: 99, command: Command::Close }, None)
        );
        prop_assert!(closed, "{:?}", read[1]);
    }

    #[test]
    fn prop_a_response_is_one_line_whatever_its_text(id in any::<i64>(), text in any::<String>(), path in any::<String>()) {
        let mut out = Vec::new();
        Response::error(id, text.clone()).write_line(&mut out);
        Response::stored(id, &path).write_line(&mut out);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        prop_assert_eq!(lines.len(), 3);
        prop_assert!(lines[2].is_empty());
        let error: serde_json::Value = serde_json::from_slice(lines[0]).unwrap();
        prop_assert_eq!(&error["ID"], &serde_json::Value::from(id));
        prop_assert_eq!(&error["Err"], &serde_json::Value::from(text));
        let stored: serde_json::Value = serde_json::from_slice(lines[1]).unwrap();
        prop_assert_eq!(&stored["DiskPath"], &serde_json::Value::from(path));
    }
}
