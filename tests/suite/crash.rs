//! A goremotecache process killed with SIGKILL in the middle of a put leaves nothing that a
//! later process serves as a hit.

use crate::support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire::Command;
use goremotecache::ids::OutputId;
use support::{Client, action, encode_request, pseudo_random};

fn files_in(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    (e.path(), e.metadata().unwrap().len())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_in_the_middle_of_a_large_put_leaves_no_hit() {
    let dir = tempfile::tempdir().unwrap();
    let body = pseudo_random(42, 40 * 1024 * 1024);
    let output = OutputId::of(&body);
    let mut client = Client::on_dir(dir.path(), &[]);
    let mut header = encode_request(
        1,
        &Command::Put {
            action_id: action(1),
            output_id: output,
            body_size: body.len() as u64,
        },
    );
    header.push(b'"');
    client.send(&header);
    let encoded = B64.encode(&body);
    client.send(&encoded.as_bytes()[..encoded.len() / 2]);

    // Wait until the body is being written to disk, then kill.
    let tmp = dir.path().join("cache/tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files_in(&tmp)
        .iter()
        .any(|(_, len)| *len > 10 * 1024 * 1024)
    {
        assert!(Instant::now() < deadline, "the body never reached the disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    client.child.kill().unwrap();
    client.child.wait().unwrap();

    let output_path = dir
        .path()
        .join("cache/o")
        .join(&output.to_hex()[..2])
        .join(output.to_hex());
    assert!(!output_path.exists(), "a partial output was put in place");

    let mut next = Client::on_dir(dir.path(), &[]);
    next.get(1, action(1));
    assert_eq!(
        next.read().unwrap(),
        serde_json::json!({"ID": 1, "Miss": true})
    );
    // The same put, complete this time, stores the whole body.
    next.put(2, action(1), &body);
    let stored = next.read().unwrap();
    assert_eq!(
        std::fs::read(stored["DiskPath"].as_str().unwrap()).unwrap(),
        body
    );
    next.close_request(3);
    next.read().unwrap();
    assert!(next.finish().0.success());
}

/// Kills at varied moments around the end of a put: whatever survives is whole.
#[test]
fn killed_around_the_end_of_a_put_serves_whole_outputs_or_misses() {
    let body = pseudo_random(7, 8 * 1024 * 1024);
    let output = OutputId::of(&body);
    let mut hits = 0;
    let mut misses = 0;
    for delay_ms in [0u64, 1, 2, 5, 10, 20, 40, 80] {
        let dir = tempfile::tempdir().unwrap();
        let mut client = Client::on_dir(dir.path(), &[]);
        client.put(1, action(1), &body);
        std::thread::sleep(Duration::from_millis(delay_ms));
        client.child.kill().unwrap();
        client.child.wait().unwrap();

        let mut next = Client::on_dir(dir.path(), &[]);
        next.get(1, action(1));
        let answer = next.read().unwrap();
        if answer["Miss"] == true {
            misses += 1;
        } else {
            hits += 1;
            assert_eq!(answer["OutputID"], B64.encode(output.0));
            assert_eq!(answer["Size"], body.len());
            let served = std::fs::read(answer["DiskPath"].as_str().unwrap()).unwrap();
            assert!(
                served == body,
                "a torn output was served after a kill at {delay_ms} ms"
            );
        }
        next.close_request(2);
        next.read().unwrap();
        next.finish();
    }
    println!("kills around the end of a put: {hits} whole hits, {misses} misses");
}
