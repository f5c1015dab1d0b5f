//! What the go command talks to: the GOCACHEPROG wire codec ([`wire`], with its streaming
//! body decoder in `body`) and one session over
//! stdin/stdout ([`session`]). Nothing here knows what serves the requests: the session calls
//! a [`session::Handler`], which the tiered cache implements.

mod body;
pub mod session;
pub mod wire;
