//! Property tests of the batch framing (see `crate::proptests`): any answer the server can
//! write decodes to the same events however its bytes are cut; a damaged answer gives events
//! or an error, never a panic, and never more data than it holds; a chunk that claims any
//! length up to `u64::MAX` is streamed, not allocated; request bodies round-trip.

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, cuts, lying_len, mutate, mutations, pieces};

/// One frame of an answer, as the server writes it.
#[derive(Debug, Clone)]
enum Frame {
    Entry(ActionId, Vec<Vec<u8>>),
    Missing(ActionId),
    Failed(ActionId, String),
    /// An entry that failed after some chunks.
    Abandoned(ActionId, Vec<Vec<u8>>, String),
}

fn action() -> impl Strategy<Value = ActionId> {
    any::<[u8; 32]>().prop_map(ActionId)
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..4)
}

/// A reason: any text, up to a few hundred characters of any width, newlines included (and
/// long runs of four-byte characters).
fn reason() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..400).prop_map(|chars| chars.into_iter().collect()),
        "[\u{1F600}-\u{1F64F}\u{e9}a\n]{200,400}",
        "[\u{1F600}-\u{1F64F}]{250,400}",
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (action(), chunks()).prop_map(|(a, c)| Frame::Entry(a, c)),
        action().prop_map(Frame::Missing),
        (action(), reason()).prop_map(|(a, r)| Frame::Failed(a, r)),
        (action(), chunks(), reason()).prop_map(|(a, c, r)| Frame::Abandoned(a, c, r)),
    ]
}

/// The bytes of `frames` and the events they decode to (data merged).
fn answer(frames: &[Frame]) -> (Vec<u8>, Vec<Event>) {
    let mut bytes = Vec::new();
    let mut events = Vec::new();
    let write_chunks = |bytes: &mut Vec<u8>, events: &mut Vec<Event>, chunks: &[Vec<u8>]| {
        for chunk in chunks {
            bytes.extend_from_slice(&chunk_header(chunk.len()));
            bytes.extend_from_slice(chunk);
        }
        if !chunks.is_empty() {
            events.push(Event::Data(chunks.concat().into()));
        }
    };
    // What a reason reads back as: what `failed` wrote, after its key and a space.
    let written = |action: &ActionId, reason: &str| {
        let line = failed(action, reason);
        String::from_utf8(line[67..line.len() - 1].to_vec()).expect("text")
    };
    for frame in frames {
        match frame {
            Frame::Entry(action, chunks) => {
                bytes.extend_from_slice(&start(action));
                events.push(Event::Start(*action));
                write_chunks(&mut bytes, &mut events, chunks);
                bytes.extend_from_slice(&end());
                events.push(Event::End);
            }
            Frame::Missing(action) => {
                bytes.extend_from_slice(&missing(action));
                events.push(Event::Missing(*action));
            }
            Frame::Failed(action, reason) => {
                bytes.extend_from_slice(&failed(action, reason));
                events.push(Event::Failed(*action, written(action, reason)));
            }
            Frame::Abandoned(action, chunks, reason) => {
                bytes.extend_from_slice(&start(action));
                events.push(Event::Start(*action));
                write_chunks(&mut bytes, &mut events, chunks);
                bytes.extend_from_slice(&failed(action, reason));
                events.push(Event::Failed(*action, written(action, reason)));
            }
        }
    }
    (bytes, events)
}

/// Decodes `pieces` one push at a time, merging adjacent data; stops at the first error.
fn decode(pieces: &[&[u8]]) -> (Vec<Event>, Option<String>, Decoder) {
    let mut decoder = Decoder::new();
    let mut events: Vec<Event> = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => match (events.last_mut(), event) {
                    (Some(Event::Data(prev)), Event::Data(more)) => {
                        *prev = [prev.as_ref(), more.as_ref()].concat().into();
                    }
                    (_, event) => events.push(event),
                },
                Ok(None) => break,
                Err(err) => return (events, Some(err), decoder),
            }
        }
    }
    (events, None, decoder)
}

fn data_len(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| match e {
            Event::Data(data) => data.len(),
            _ => 0,
        })
        .sum()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_answers_round_trip_however_they_are_cut(
        frames in prop::collection::vec(frame(), 0..6),
        cuts in cuts(),
    ) {
        let (bytes, expected) = answer(&frames);
        let (events, error, decoder) = decode(&pieces(&bytes, &cuts));
        prop_assert_eq!(error, None);
        prop_assert_eq!(events, expected);
        prop_assert!(decoder.at_frame_boundary());
    }

    #[test]
    fn prop_damaged_answers_give_events_or_an_error(
        frames in prop::collection::vec(frame(), 1..6),
        mutations in mutations(),
        cuts in cuts(),
    ) {
        let (bytes, _) = answer(&frames);
        let damaged = mutate(&bytes, &mutations);
        let (events, _, _) = decode(&pieces(&damaged, &cuts));
        prop_assert!(data_len(&events) <= damaged.len());
        prop_assert!(events.len() <= damaged.len());
    }

    #[test]
    fn prop_any_answer_decodes_the_same_however_it_is_cut(
        frames in prop::collection::vec(frame(), 1..6),
        mutations in mutations(),
        damage in any::<bool>(),
        cuts in cuts(),
    ) {
        let (bytes, _) = answer(&frames);
        let bytes = if damage { mutate(&bytes, &mutations) } else { bytes };
        let (whole, whole_error, _) = decode(&[&bytes]);
        let (cut, cut_error, _) = decode(&pieces(&bytes, &cuts));
        prop_assert_eq!(whole, cut);
        prop_assert_eq!(whole_error.is_some(), cut_error.is_some(), "{:?} {:?}", whole_error, cut_error);
    }

    #[test]
    fn prop_a_chunk_of_any_claimed_length_is_streamed_not_allocated(
        claimed in lying_len(),
        given in prop::collection::vec(any::<u8>(), 0..256),
        cuts in cuts(),
    ) {
        prop_assume!(claimed > 0);
        let mut bytes = start(&ActionId([7; 32])).to_vec();
        bytes.extend_from_slice(format!("{claimed}\n").as_bytes());
        bytes.extend_from_slice(&given);
        let (events, error, decoder) = decode(&pieces(&bytes, &cuts));
        match usize::try_from(claimed) {
            Ok(claimed) => {
                // What arrived of the chunk, and nothing more (bytes after it are the next
                // chunk's header, which may be garbage).
                prop_assert_eq!(data_len(&events), given.len().min(claimed));
                if claimed >= given.len() {
                    prop_assert_eq!(error, None);
                    prop_assert!(!decoder.at_frame_boundary());
                }
            }
            Err(_) => prop_assert!(error.is_some()),
        }
    }

    #[test]
    fn prop_request_bodies_round_trip(keys in prop::collection::vec(action(), 0..40), repeat in any::<bool>()) {
        let mut asked = keys.clone();
        if repeat {
            asked.extend_from_slice(&keys);
        }
        let mut unique = Vec::new();
        for key in &keys {
            if !unique.contains(key) {
                unique.push(*key);
            }
        }
        prop_assert_eq!(parse_keys(request_body(&asked).as_bytes()).unwrap(), unique);
    }

    #[test]
    fn prop_any_request_body_parses_or_is_refused(
        keys in prop::collection::vec(action(), 1..8),
        mutations in mutations(),
    ) {
        let damaged = mutate(request_body(&keys).as_bytes(), &mutations);
        if let Ok(parsed) = parse_keys(&damaged) {
            // Only keys in their one spelling, each once.
            let body = request_body(&parsed);
            prop_assert_eq!(&parse_keys(body.as_bytes()).unwrap(), &parsed);
            let text = String::from_utf8(damaged).unwrap();
            for key in &parsed {
                prop_assert!(text.contains(&key.to_hex()));
            }
        }
    }
}

/// Found by `prop_any_answer_decodes_the_same_however_it_is_cut`: `failed` kept 300
/// characters of a reason, which in four-byte characters made a line longer than a frame
/// header may be, and the decoder took such a line when it arrived whole but refused it when
/// it arrived in pieces.
#[test]
fn a_long_reason_in_wide_characters_decodes_however_it_is_cut() {
    let action = ActionId([3; 32]);
    let line = failed(&action, &"\u{1F600}".repeat(400));
    assert!(line.len() <= MAX_LINE + 1, "{} bytes", line.len());
    let (whole, error, _) = decode(&[&line]);
    assert_eq!(error, None);
    let (cut, error, _) = decode(&[&line[..line.len() - 1], &line[line.len() - 1..]]);
    assert_eq!(error, None);
    assert_eq!(whole, cut);
    // A header line over the bound is refused whether or not its end has arrived.
    let long = [b"M ".as_slice(), &[b'0'; MAX_LINE], b"\n"].concat();
    assert!(decode(&[&long]).1.is_some());
    assert!(
        decode(&[&long[..MAX_LINE + 1], &long[MAX_LINE + 1..]])
            .1
            .is_some()
    );
}
