//! A standalone S3 server for benchmarks and manual trials: the tests' in-process s3s server
//! (checking SigV4 signatures, one bucket `gocache`), plus latency-adding TCP proxies in front
//! of it.
//!
//!     cargo run --release --example s3_server --features s3-server-example -- 0 20
//!
//! prints `endpoint <url>` for the server, `bucket <dir>` for the directory that holds the
//! bucket's objects (benchmarks delete objects there), then `proxy <ms> <url>` for each delay given (0 is
//! the server itself), then `ready`. It reads commands on stdin: `counts` prints the requests
//! seen by method as JSON, `reset` clears them; end of input stops it. Credentials:
//! AWS_ACCESS_KEY_ID=AKIDGOREMOTECACHE, AWS_SECRET_ACCESS_KEY=test-secret-key-for-goremotecache.

#[path = "../tests/suite/support/proxy.rs"]
#[allow(dead_code)]
mod proxy;
#[path = "../tests/suite/support/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::io::BufRead;
use std::time::Duration;

fn main() {
    let server = s3::S3Server::start();
    println!("endpoint {}", server.endpoint);
    println!("bucket {}", server.bucket_dir().display());
    let mut proxies = Vec::new();
    for arg in std::env::args().skip(1) {
        let ms: u64 = arg
            .parse()
            .unwrap_or_else(|_| panic!("{arg:?} is not a delay in ms"));
        if ms == 0 {
            println!("proxy 0 {}", server.endpoint);
            continue;
        }
        let proxy = proxy::Proxy::start(
            &server.endpoint,
            proxy::Mode::Delay(Duration::from_millis(ms)),
        );
        println!("proxy {ms} {}", proxy.endpoint);
        proxies.push(proxy);
    }
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("counts") => println!(
                "{{\"GET\": {}, \"PUT\": {}, \"HEAD\": {}, \"POST\": {}}}",
                server.count("GET"),
                server.count("PUT"),
                server.count("HEAD"),
                server.count("POST")
            ),
            Ok("reset") => {
                server.reset_counts();
                println!("ok");
            }
            Ok(other) => println!("unknown command {other:?}"),
            Err(_) => break,
        }
    }
}
