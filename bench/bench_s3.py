#!/usr/bin/env python3
"""Benchmark goremotecache's S3 tier: a fresh machine building from a warm bucket.

What it measures, in one run, side by side, with the in-process S3 server of the tests
(`examples/s3_server.rs`, s3s checking SigV4) and a TCP proxy adding round-trip latency:

1. Cold `go build std`: Go's own cache, goremotecache on local disk only, and goremotecache
   uploading to an empty bucket. The time uploads add before close (target: under 5%) and
   the close wait are reported apart.
2. Warm bucket, fresh local directory: `go build std` through goremotecache at 0 ms and at
   20 ms (--delay) of added round trip, against Go's own warm cache and against the cold
   build. Requests per remote hit (target: 1), from the server's request count.
3. Bytes stored in the bucket against the raw bytes, and goremotecache's peak memory.

Run from the repository root:

    python3 bench/bench_s3.py                  # builds the binary and the server
    python3 bench/bench_s3.py --runs 1 --delay 20

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers of bench.py)
from bench import BenchError, go_env, progress, secs, time_go_build_std  # noqa: E402

ACCESS_KEY = "AKIDGOREMOTECACHE"
SECRET_KEY = "test-secret-key-for-goremotecache"
UPLOAD_TARGET = 0.05


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="warm builds per setting (default 2)")
    parser.add_argument("--delay", type=int, default=20, help="added round trip in ms (default 20)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    return parser.parse_args()


def build():
    progress("cargo build --release (binary and example s3_server)...")
    for argv in (["cargo", "build", "--release"], ["cargo", "build", "--release", "--example", "s3_server", "--features", "s3-server-example"]):
        if subprocess.run(argv, cwd=bench.REPO_ROOT).returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed")
    target = os.path.join(bench.REPO_ROOT, "target", "release")
    return os.path.join(target, "goremotecache"), os.path.join(target, "examples", "s3_server")


class Server:
    """The example S3 server, with a proxy at each delay."""

    def __init__(self, path, delays):
        self.proc = subprocess.Popen([path, *map(str, delays)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.proxies = {}
        for line in self.proc.stdout:
            words = line.split()
            if words[0] == "proxy":
                self.proxies[int(words[1])] = words[2]
            if words[0] == "ready":
                return
        raise BenchError("the S3 server did not start")

    def command(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def counts(self):
        return json.loads(self.command("counts"))

    def reset(self):
        self.command("reset")

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait()


class Machine:
    """A fresh CI machine: its own local cache and GOCACHE directories."""

    def __init__(self, tmp, name, binary, endpoint=None, prefix="bench", extra=()):
        self.extra = list(extra)
        self.dir = os.path.join(tmp, name)
        self.gocache = os.path.join(self.dir, "gocache")
        os.makedirs(self.gocache)
        self.binary = binary
        self.endpoint = endpoint
        self.prefix = prefix
        self.runs = 0

    def build(self, label):
        self.runs += 1
        stats_file = os.path.join(self.dir, f"stats-{self.runs}.json")
        argv = [self.binary, "--cache-dir", os.path.join(self.dir, "cache"),
                "--lock-dir", os.path.join(self.dir, "locks"), "--stats-file", stats_file]
        if self.endpoint:
            argv += ["--s3-bucket", "gocache", "--s3-prefix", self.prefix, "--s3-endpoint", self.endpoint,
                     "--s3-region", "us-east-1", "--s3-force-path-style", "--upload-wait", "10m"]
        argv += self.extra
        env = go_env(self.gocache, shlex.join(argv))
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
        progress(f"{label}...", end=" ")
        seconds = time_go_build_std(env, label)
        with open(stats_file) as f:
            stats = json.load(f)
        progress(secs(seconds))
        return seconds, stats


def go_build(tmp, name, label):
    gocache = os.path.join(tmp, name)
    os.makedirs(gocache, exist_ok=True)
    progress(f"{label}...", end=" ")
    seconds = time_go_build_std(go_env(gocache), label)
    progress(secs(seconds))
    return seconds


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    binary, server_path = build()
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-s3-")
    server = Server(server_path, [0, args.delay])
    rows = []
    try:
        go_cold = go_build(tmp, "go-cache", "cold go build std, Go's cache")
        disk_cold, _ = Machine(tmp, "disk", binary).build("cold go build std, goremotecache on disk")
        upload_cold, upload_stats = Machine(tmp, "uploader", binary, server.proxies[0]).build(
            "cold go build std, goremotecache uploading to an empty bucket")
        remote = upload_stats["remote"]
        close_wait = remote["close_wait_seconds"]
        before_close = upload_cold - close_wait
        added = before_close / disk_cold - 1
        rows += [
            ["cold `go build std`, Go's cache", secs(go_cold), "—", "—", "—", "—"],
            ["cold, goremotecache on local disk", secs(disk_cold), secs(go_cold),
             f"{disk_cold / go_cold:.2f}×", "—", "—"],
            ["cold, uploading: time before close", secs(before_close), secs(disk_cold),
             f"{added * 100:+.1f}%", f"< {UPLOAD_TARGET * 100:.0f}%", bench.yes_no(added < UPLOAD_TARGET)],
            ["cold, uploading: close wait", secs(close_wait), "—", secs(close_wait), "—", "—"],
            ["uploads: stored / dropped / errors", f"{remote['uploads']} / {remote['uploads_dropped']} / "
             f"{remote['upload_errors']}", "—", "—", "—", "—"],
            ["bytes stored in the bucket against raw", bench.mib(remote["bytes_up"]), bench.mib(remote["raw_bytes_up"]),
             f"{remote['bytes_up'] / max(remote['raw_bytes_up'], 1):.2f}×", "—", "—"],
            ["peak RSS, cold build uploading", bench.mib(upload_stats["peak_rss_bytes"]), "—", "—", "< 40 MiB",
             bench.yes_no(upload_stats["peak_rss_bytes"] < 40 * bench.MIB)],
        ]
        go_warm = min(time_go_build_std(go_env(os.path.join(tmp, "go-cache")), "warm") for _ in range(3))
        progress(f"warm go build std, Go's cache: {secs(go_warm)}")
        rows.append(["warm `go build std`, Go's cache (best of 3)", secs(go_warm), "—", "—", "—", "—"])
        for delay in (0, args.delay):
            for run in range(args.runs):
                server.reset()
                machine = Machine(tmp, f"fresh-{delay}-{run}", binary, server.proxies[delay])
                seconds, stats = machine.build(f"fresh machine, warm bucket, +{delay} ms")
                counts = server.counts()
                r = stats["remote"]
                asked = r["hits"] + r["misses"]
                rows.append([
                    f"fresh machine, warm bucket, +{delay} ms (run {run + 1})", secs(seconds), secs(go_warm),
                    f"{seconds / go_warm:.2f}× warm, {seconds / go_cold:.2f}× cold", "—", "—"])
                rows.append([
                    f"  remote hits / misses; GETs per remote get (+{delay} ms)",
                    f"{r['hits']} / {r['misses']}", "—",
                    f"{counts['GET'] / asked:.2f}" if asked else "no gets", "1", bench.yes_no(asked and counts["GET"] == asked)])
                rows.append([f"  peak RSS (+{delay} ms)", bench.mib(stats["peak_rss_bytes"]), "—", "—", "< 40 MiB",
                             bench.yes_no(stats["peak_rss_bytes"] < 40 * bench.MIB)])
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = markdown(env, rows, command)
    bench.publish(text, args.markdown)
    return 0


def markdown(env, rows, command):
    return bench.markdown_table(
        "goremotecache S3 benchmark", env,
        f"Command: `{command}`. Store: the in-process s3s server of the tests on loopback; latency "
        "added by a TCP proxy on loopback.", rows)


if __name__ == "__main__":
    bench.run(main, "bench_s3.py")
