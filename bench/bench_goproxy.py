#!/usr/bin/env python3
"""Benchmark the module proxy: `go mod download` on a fresh machine, direct vs through `serve --goproxy`.

The workload is a module that imports k8s.io/client-go, gin and the Prometheus client
(pinned below), whose `go mod download` fetches over 50 modules. One run measures, each on a fresh
module cache (an empty GOMODCACHE, as on a new CI machine), interleaved:

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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import BenchError, progress, secs  # noqa: E402
from stores import LatencyProxy, free_port  # noqa: E402

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


def go_env_value(name):
    value = bench.run_text(["go", "env", name])
    if not value:
        raise BenchError(f"`go env {name}` gave nothing")
    return value


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
    """The workload module, with go.mod and go.sum resolved against the upstream."""
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
    return module


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


class ProxyServer:
    """`goremotecache serve --goproxy` on a storage directory, with anonymous reads."""

    def __init__(self, binary, tmp, upstream):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "serve.log"), "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--storage-dir", os.path.join(tmp, "storage"), "--listen",
             f"127.0.0.1:{self.port}", "--allow-anonymous-read", "--goproxy",
             "--goproxy-upstream", upstream, "--goproxy-sumdb", "off"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"serve did not start; see {self.log.name}")
                time.sleep(0.05)

    def counts(self):
        """goremotecache_goproxy_requests_total by result."""
        text = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("goremotecache_goproxy_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                result = labels.split('result="', 1)[1].split('"', 1)[0]
                counts[result] = counts.get(result, 0) + int(float(value))
        return counts

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


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
        module = prepare(tmp, upstream)
        server = ProxyServer(binary, tmp, upstream)
        latency = LatencyProxy("127.0.0.1", server.port, args.delay)
        near, far = server.url + "/mod", latency.endpoint + "/mod"
        progress("warming the store (one download through the proxy)...")
        _, modules = download(module, tmp, near)
        before = server.counts()
        times = {"direct": [], "near": [], "far": []}
        for run in range(args.runs):
            for key, goproxy in (("direct", upstream), ("near", near), ("far", far)):
                took, count = download(module, tmp, goproxy)
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
    asked = {result: after.get(result, 0) - before.get(result, 0) for result in after}
    total = sum(asked.values())
    direct = statistics.median(times["direct"])
    rows = [
        [f"`go mod download` ({modules} modules), direct from the upstream, median of {args.runs}",
         "—", secs(direct), "1.00×", "—", "—"],
    ]
    for key, label in (("near", "through the proxy, warm store, +0 ms"),
                       ("far", f"through the proxy, warm store, +{args.delay} ms")):
        median = statistics.median(times[key])
        rows.append([f"{label}, median of {args.runs}", secs(median), secs(direct),
                     f"{median / direct:.2f}×", "< 1.00×", bench.yes_no(median < direct)])
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
