//! The request encoder of test clients: requests written the way the go command writes them
//! (goremotecache itself only reads them). Standalone, so that tests/codec_stream.rs, a binary
//! of its own, can include it too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use goremotecache::cacheprog::wire::Command;

/// Encodes a request line the way the go command does.
pub fn encode_request(id: i64, command: &Command) -> Vec<u8> {
    let mut value = serde_json::Map::new();
    value.insert("ID".into(), id.into());
    match command {
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
            value.insert("OutputID".into(), B64.encode(output_id.0).into());
            if *body_size > 0 {
                value.insert("BodySize".into(), (*body_size).into());
            }
        }
        Command::Close => {
            value.insert("Command".into(), "close".into());
        }
    }
    let mut line = serde_json::to_vec(&value).expect("requests serialize");
    line.extend_from_slice(b"\n\n");
    line
}
