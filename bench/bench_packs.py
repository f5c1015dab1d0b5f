#!/usr/bin/env python3
"""Benchmark prefetch packs: a fresh machine's `go build std` from a warm S3 bucket, with the
build's pack and without it (docs/prefetch.md, "Packs").

With the example S3 server (`examples/s3_server.rs`) and its latency proxy:

1. Machine A builds std cold, uploading everything; its close writes the manifest and the
   pack (the time of that close is reported, and the pack's size).
2. Fresh machine B builds std through the proxy: the pack is read. Requests (GETs) counted
   by the server, build time.
3. The pack is deleted from the bucket; fresh machine C builds std the same way: one GET per
   entry, as before packs. (C's close writes the pack again.)

Run from the repository root:

    python3 bench/bench_packs.py                       # builds release binaries first
    python3 bench/bench_packs.py --binary target/debug/goremotecache \\
        --server target/debug/examples/s3_server --delay 20

Progress goes to stderr; the Markdown table to stdout (and to --markdown PATH).
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_s3  # noqa: E402
from bench import BenchError, progress, secs  # noqa: E402

KEY = ["--prefetch-key", "bench-packs-std"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=int, default=20, help="added round trip in ms (default 20)")
    parser.add_argument("--binary", help="goremotecache binary (default: build release)")
    parser.add_argument("--server", help="the s3_server example binary (default: build release)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    return parser.parse_args()


def start_server(path, delays):
    """bench_s3.Server, also reading the `bucket <dir>` line the example prints."""
    server = bench_s3.Server.__new__(bench_s3.Server)
    server.proc = subprocess.Popen([path, *map(str, delays)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)
    server.proxies = {}
    server.bucket_dir = None
    for line in server.proc.stdout:
        words = line.split()
        if words[0] == "proxy":
            server.proxies[int(words[1])] = words[2]
        if words[0] == "bucket":
            server.bucket_dir = words[1]
        if words[0] == "ready":
            return server
    raise BenchError("the S3 server did not start")


def pack_stats(stats):
    return ((stats.get("remote") or {}).get("prefetch") or {}).get("pack") or {}


def main():
    args = parse_args()
    binary, server_path = args.binary, args.server
    if not binary or not server_path:
        binary, server_path = bench_s3.build()
    server = start_server(server_path, [0, args.delay])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-packs-") as tmp:
        a = bench_s3.Machine(tmp, "a", binary, server.proxies[0], extra=KEY)
        seconds, stats = a.build("A: cold go build std, uploads, writes manifest and pack")
        pack = pack_stats(stats)
        close = stats["remote"]["close_wait_seconds"]
        rows.append(("A: cold build", secs(seconds), "-", f"pack of {pack.get('written')} entries, "
                     f"{bench.mib(pack.get('bytes_written', 0))} written in {secs(pack.get('write_seconds', 0))} "
                     f"at close (uploads' wait: {secs(close)})"))
        for name, drop_pack in (("b", False), ("c", True)):
            if drop_pack:
                files = glob.glob(os.path.join(server.bucket_dir, "bench", "pack", "v1", "*"))
                for path in files:
                    os.remove(path)
                progress(f"deleted {len(files)} pack files")
            server.reset()
            m = bench_s3.Machine(tmp, name, binary, server.proxies[args.delay], extra=KEY)
            label = "fresh machine, " + ("no pack" if drop_pack else "with the pack")
            seconds, stats = m.build(f"{name.upper()}: {label}")
            gets = server.counts()["GET"]
            p = stats["remote"]["prefetch"]
            pk = pack_stats(stats)
            rows.append((f"{name.upper()}: {label}", secs(seconds), str(gets),
                         f"{p['fetched']} prefetched ({pk.get('entries', 0)} from the pack in "
                         f"{pk.get('requests', 0)} requests), {stats['remote']['hits']} remote hits; "
                         f"pack written at close: {pk.get('written', 0)} entries in "
                         f"{secs(pk.get('write_seconds', 0))}"))
    server.stop()
    env = bench.environment_summary()
    lines = [
        f"### Prefetch packs: fresh-machine go build std at +{args.delay} ms — {env['date']}, "
        f"{env['go']}, nproc {env['nproc']}, commit {env['commit']}",
        "",
        "Machine A builds std cold into an empty bucket (writing manifest and pack); B and C are "
        "fresh machines, B with the pack, C after it was deleted. GETs: object GETs the server "
        "answered during the run.",
        "",
        "| run | time | GETs | notes |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    bench.publish("\n".join(lines) + "\n", args.markdown)


if __name__ == "__main__":
    bench.run(main, "bench_packs")
