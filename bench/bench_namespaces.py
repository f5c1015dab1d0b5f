#!/usr/bin/env python3
"""Benchmark namespaces: what reading several namespaces costs a fresh machine.

A local miss asks every namespace at once and takes the first in order that has the entry,
so reading main's namespace from a pull request's should cost no more round trips than
reading one namespace. Measured in one run, with the in-process S3 server of the tests
(`examples/s3_server.rs`) behind a TCP proxy adding --delay ms to each round trip:

1. main's cold `go build std` fills namespace `main` (no added delay).
2. Fresh machines build `go build std` at +delay, prefetch off (every lookup is a get):
   - in `main` (one namespace: the baseline);
   - in `pr-1` reading `main` (two namespaces; every hit is in the second);
   - in `pr-1` reading `release` then `main` (three; every hit in the third).
   Wall time against the baseline, and the server's GETs per remote get (one per namespace
   asked, all at once).
3. Cold `go build std` at +delay on an empty bucket (every lookup a miss): one namespace
   against three.

Run from the repository root:

    python3 bench/bench_namespaces.py                 # builds the binary and the server
    python3 bench/bench_namespaces.py --runs 1 --delay 30

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
"""

import argparse
import os
import shlex
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import secs  # noqa: E402
from bench_s3 import Machine, Server, build  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh builds per setting (default 2)")
    parser.add_argument("--delay", type=int, default=30, help="added round trip in ms (default 30)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    return parser.parse_args()


SETTINGS = [
    ("one namespace (`main`)", ["--namespace", "main"], 1),
    ("`pr-1` reading `main`", ["--namespace", "pr-1", "--read-namespaces", "main"], 2),
    ("`pr-1` reading `release`, `main`", ["--namespace", "pr-1", "--read-namespaces", "release,main"], 3),
]


def rows_for(label, seconds, baseline, remote, gets, namespaces):
    """A build's time against the baseline, and its lookups: each remote get asks every
    namespace at once, so the server sees one GET per namespace and get."""
    asked = remote["hits"] + remote["misses"]
    return [
        [label, secs(seconds), secs(baseline), f"{seconds / baseline:.2f}×", "—", "—"],
        ["  remote hits / misses; server GETs per remote get", f"{remote['hits']} / {remote['misses']}",
         "—", f"{gets / asked:.2f}" if asked else "no gets", f"{namespaces} (at once)",
         bench.yes_no(asked > 0 and gets == asked * namespaces)],
    ]


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    binary, server_path = build()
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-ns-")
    server = Server(server_path, [0, args.delay])
    slow = server.proxies[args.delay]
    rows = []
    try:
        Machine(tmp, "main", binary, server.proxies[0], extra=["--namespace", "main"]).build(
            "cold go build std filling namespace main")
        baseline = None
        for label, extra, namespaces in SETTINGS:
            for run in range(args.runs):
                server.reset()
                machine = Machine(tmp, f"fresh-{namespaces}-{run}", binary, slow,
                                  extra=[*extra, "--prefetch=off"])
                seconds, stats = machine.build(f"fresh machine, {label}, +{args.delay} ms")
                gets = server.counts().get("GET", 0)
                r = stats["remote"]
                if baseline is None:
                    baseline = seconds
                rows += rows_for(f"fresh machine, {label} (run {run + 1})", seconds, baseline,
                                 r, gets, namespaces)
        cold = {}
        for label, extra, namespaces in (SETTINGS[0], SETTINGS[2]):
            machine = Machine(tmp, f"cold-{namespaces}", binary, slow, prefix="empty",
                              extra=[*extra, "--prefetch=off", "--remote-mode", "read-only"])
            server.reset()
            seconds, stats = machine.build(f"cold go build std, empty bucket, {label}, +{args.delay} ms")
            gets = server.counts().get("GET", 0)
            r = stats["remote"]
            cold[namespaces] = seconds
            rows += rows_for(f"cold, empty bucket, {label}", seconds, cold[1], r, gets, namespaces)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = bench.markdown_table(
        "goremotecache namespaces benchmark", env,
        f"Command: `{command}`. `go build std` on a fresh machine (empty local cache) through "
        f"the in-process s3s server on loopback, {args.delay} ms added to each round trip by a "
        "TCP proxy; prefetch off, so every lookup is a get. The ratio of a setting reading "
        "several namespaces to the one-namespace baseline is the cost of asking them all at "
        "once (1.00× is no cost).",
        rows)
    bench.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_namespaces.py")
