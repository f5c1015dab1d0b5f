#!/usr/bin/env python3
"""Benchmark the module proxy: `go mod download` on a fresh machine, direct vs through `serve --goproxy`.

The workload is a module that imports k8s.io/client-go, gin and the Prometheus client
(pinned below), whose `go mod download` fetches over 50 modules. One run measures, each on a fresh
module cache (an empty GOMODCACHE, as on a new CI machine), interleaved:

0. the floor: a `file://` GOPROXY on the module cache that prepared the workload (no
   network, no server: what the go command's own work costs, mostly extracting the zips);
1. direct: the go command fetching from the machine's own upstream (`go env GOPROXY`);
2. through `goremotecache serve --goproxy` with a warm store (every file fetched once
   before), on loopback (+0 ms);
3. the same behind a TCP proxy adding --delay ms to each round trip (a cache server in the
   same region as the CI machines, not on them).

The proxy's upstream is the same `go env GOPROXY`. Checksums come from the go.sum written
when the workload is prepared (GOSUMDB=off: the checksum database is not needed to time
downloads, and may be unreachable from a build machine). This needs the upstream to be
reachable; figures depend on how far away it is, which is why the ratio is measured in the
same run.

Run from the repository root:

    python3 bench/bench_goproxy.py                       # builds the release binary
    python3 bench/bench_goproxy.py --bin target/release/goremotecache --runs 5 --delay 30

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import BenchError, progress, secs  # noqa: E402
from stores import GoproxyServer, LatencyProxy, go_env_value  # noqa: E402

# The workload: pinned, so that every run downloads the same modules.
REQUIRES = ["k8s.io/client-go@v0.31.0", "github.com/prometheus/client_golang@v1.20.0",
            "github.com/gin-gonic/gin@v1.10.0"]
MAIN_GO = """package main

import (
\t_ "github.com/gin-gonic/gin"
\t_ "github.com/prometheus/client_golang/prometheus"
\t_ "k8s.io/client-go/kubernetes"
)

func main() {}
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", help="the goremotecache binary (default: cargo build --release)")
    parser.add_argument("--runs", type=int, default=5, help="fresh downloads per setting (default 5)")
    parser.add_argument("--delay", type=int, default=30, help="added round trip in ms (default 30)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    return parser.parse_args()


def env_for(gomodcache, goproxy):
    env = dict(os.environ)
    for name in ("GOCACHEPROG", "GOFLAGS", "GONOSUMDB", "GOPRIVATE", "GONOPROXY"):
        env.pop(name, None)
    env.update(GOMODCACHE=gomodcache, GOPROXY=goproxy, GOSUMDB="off", GOTOOLCHAIN="local",
               GOFLAGS="-modcacherw")
    return env


def run_go(argv, cwd, env, what):
    result = subprocess.run(["go", *argv], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{what}: go {' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def prepare(tmp, upstream):
    """The workload module, with go.mod and go.sum resolved against the upstream, and the
    module cache that did it (the floor's file:// proxy)."""
    module = os.path.join(tmp, "workload")
    os.makedirs(module)
    with open(os.path.join(module, "go.mod"), "w") as f:
        f.write("module bench.example/goproxy\n\ngo 1.24\n")
    with open(os.path.join(module, "main.go"), "w") as f:
        f.write(MAIN_GO)
    env = env_for(os.path.join(tmp, "prepare-modcache"), upstream)
    progress(f"preparing the workload ({', '.join(REQUIRES)}) from {upstream}...")
    run_go(["get", *REQUIRES], module, env, "preparing")
    run_go(["mod", "tidy"], module, env, "preparing")
    run_go(["mod", "download"], module, env, "preparing")
    return module, "file://" + os.path.join(tmp, "prepare-modcache", "cache", "download")


def download(module, tmp, goproxy):
    """`go mod download` on a fresh module cache: seconds and the modules fetched."""
    cache = tempfile.mkdtemp(prefix="modcache-", dir=tmp)
    try:
        start = time.monotonic()
        out = run_go(["mod", "download", "-json"], module, env_for(cache, goproxy), f"download via {goproxy}")
        took = time.monotonic() - start
        decoder, text, count = json.JSONDecoder(), out.strip(), 0
        while text:
            item, end = decoder.raw_decode(text)
            if item.get("Error"):
                raise BenchError(f"download via {goproxy}: {item['Path']}: {item['Error']}")
            count += 1
            text = text[end:].lstrip()
        return took, count
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    if shutil.which("go") is None:
        raise BenchError("no go command on PATH")
    binary = bench.resolve_binary(args.bin)
    env = bench.environment_summary()
    upstream = go_env_value("GOPROXY")
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-goproxy-")
    server = latency = None
    try:
        module, floor = prepare(tmp, upstream)
        server = GoproxyServer(binary, tmp, upstream, ["--goproxy-sumdb", "off"])
        latency = LatencyProxy("127.0.0.1", server.port, args.delay)
        near, far = server.url + "/mod", latency.endpoint + "/mod"
        progress("warming the store (one download through the proxy)...")
        _, modules = download(module, tmp, near)
        before = server.counts()
        times = {"floor": [], "direct": [], "near": [], "far": []}
        cpu = 0.0
        for run in range(args.runs):
            for key, goproxy in (("floor", floor), ("direct", upstream), ("near", near), ("far", far)):
                start_cpu = server.cpu_seconds()
                took, count = download(module, tmp, goproxy)
                if key in ("near", "far"):
                    cpu += server.cpu_seconds() - start_cpu
                if count != modules:
                    raise BenchError(f"{key} downloaded {count} modules, expected {modules}")
                times[key].append(took)
            progress(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{key} {times[key][-1]:.2f} s" for key in times))
        after = server.counts()
    finally:
        if latency is not None:
            latency.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    asked = {}
    for (_, result), count in after.items():
        asked[result] = asked.get(result, 0) + count
    for (_, result), count in before.items():
        asked[result] -= count
    total = sum(asked.values())
    direct = statistics.median(times["direct"])
    floor_median = statistics.median(times["floor"])
    rows = [
        [f"`go mod download` ({modules} modules), direct from the upstream, median of {args.runs}",
         "—", secs(direct), "1.00×", "—", "—"],
        [f"the floor: a `file://` GOPROXY, no network, median of {args.runs}", secs(floor_median),
         secs(direct), f"{floor_median / direct:.2f}×", "—", "—"],
    ]
    for key, label in (("near", "through the proxy, warm store, +0 ms"),
                       ("far", f"through the proxy, warm store, +{args.delay} ms")):
        median = statistics.median(times[key])
        rows.append([f"{label}, median of {args.runs}", secs(median), secs(direct),
                     f"{median / direct:.2f}×", "< 1.00×", bench.yes_no(median < direct)])
    rows.append(["the server's CPU time per download through it (user + system)",
                 secs(cpu / (2 * args.runs)), "—", "—", "—", "—"])
    rows.append(["proxy requests in the timed runs that were answered from storage",
                 f"{asked.get('hit', 0)} of {total}", "—", "—", "all", bench.yes_no(asked.get("hit", 0) == total)])
    table = bench.markdown_table(
        "goremotecache module proxy benchmark", env,
        f"Command: `{command}`. Upstream: the machine's `go env GOPROXY`; proxy: `serve --goproxy` on "
        f"a storage directory, on loopback, and behind a TCP proxy adding {args.delay} ms per round "
        "trip. Each download starts from an empty GOMODCACHE; ratio = through the proxy / direct.",
        rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_goproxy.py")
