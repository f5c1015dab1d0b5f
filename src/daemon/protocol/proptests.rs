//! Property tests of the daemon's line protocol (see `crate::proptests`): the messages a
//! `connect` and a daemon exchange round-trip through their lines, read one after another
//! from a stream; a damaged stream gives messages or errors, never a panic, and a line over
//! the bound is refused without being held.

use proptest::prelude::*;

use super::*;
use crate::proptests::{config, mutate, mutations};

fn action() -> impl Strategy<Value = ActionId> {
    any::<[u8; 32]>().prop_map(ActionId)
}

fn key() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((any::<String>(), any::<String>()), 0..3)
}

fn hello() -> impl Strategy<Value = Hello> {
    let kind = prop_oneof![
        prop::option::of(key()).prop_map(|key| Kind::Session { key }),
        Just(Kind::Status),
        any::<u64>().prop_map(|wait_ms| Kind::Flush { wait_ms }),
        key().prop_map(|key| Kind::Warm { key }),
    ];
    (any::<String>(), any::<u32>(), kind).prop_map(|(fingerprint, pid, kind)| Hello {
        version: VERSION,
        fingerprint,
        pid,
        kind,
    })
}

fn ask() -> impl Strategy<Value = Ask> {
    prop_oneof![
        (any::<u64>(), action()).prop_map(|(id, action)| Ask::Get { id, action }),
        prop::collection::vec((action(), any::<Option<u64>>(), any::<u64>()), 0..4)
            .prop_map(|gets| Ask::Noted { gets }),
        (
            action(),
            any::<[u8; 32]>(),
            any::<[u64; 3]>(),
            any::<bool>()
        )
            .prop_map(
                |(action, output, [size, time_ns, took_ns], already)| Ask::Put(PutNote {
                    action,
                    output: OutputId(output),
                    size,
                    time_ns,
                    already,
                    took_ns,
                })
            ),
        Just(Ask::Close),
    ]
}

fn got() -> impl Strategy<Value = Answer> {
    let found = (
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
        any::<String>(),
    )
        .prop_map(|(output, size, time_ns, path)| Found {
            output: OutputId(output),
            size,
            time_ns,
            path: path.into(),
        });
    (
        any::<u64>(),
        prop::option::of(found),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(id, found, error)| Answer::Got { id, found, error })
}

/// Reads every `T` in `bytes`, stopping at the first error.
fn read_all<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> (Vec<T>, Option<io::Error>) {
    let mut reader = bytes;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        match read_message(&mut reader, &mut buf) {
            Ok(Some(message)) => out.push(message),
            Ok(None) => return (out, None),
            Err(err) => return (out, Some(err)),
        }
        assert!(buf.len() <= MAX_LINE + 1, "a line over the bound was held");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_messages_round_trip_one_per_line(
        hello in hello(),
        asks in prop::collection::vec(ask(), 0..6),
        answers in prop::collection::vec(got(), 0..4),
    ) {
        prop_assert_eq!(read_all::<Hello>(&line(&hello)).0, vec![hello]);
        let stream: Vec<u8> = asks.iter().flat_map(line).collect();
        let (read, error) = read_all::<Ask>(&stream);
        prop_assert!(error.is_none());
        prop_assert_eq!(read, asks);
        let stream: Vec<u8> = answers.iter().flat_map(line).collect();
        let (read, error) = read_all::<Answer>(&stream);
        prop_assert!(error.is_none());
        prop_assert_eq!(read, answers);
    }

    #[test]
    fn prop_damaged_streams_give_messages_or_errors(
        asks in prop::collection::vec(ask(), 1..6),
        mutations in mutations(),
    ) {
        let stream: Vec<u8> = asks.iter().flat_map(line).collect();
        let damaged = mutate(&stream, &mutations);
        let (read, _) = read_all::<Ask>(&damaged);
        prop_assert!(read.len() <= damaged.iter().filter(|&&b| b == b'\n').count() + 1);
    }
}

#[test]
fn a_line_over_the_bound_is_refused() {
    let mut long = line(&Ask::Close);
    long.splice(0..0, std::iter::repeat_n(b' ', MAX_LINE));
    let (read, error) = read_all::<Ask>(&long);
    assert!(read.is_empty());
    assert_eq!(error.unwrap().kind(), io::ErrorKind::InvalidData);
}
