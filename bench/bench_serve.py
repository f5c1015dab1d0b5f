#!/usr/bin/env python3
"""Benchmark `goremotecache serve`: requests per second and p50/p99 latency of hits.

What it measures, in one run: GET hits of a 1 KiB and of a 1 MiB entry at 64 concurrent
connections, with wrk (Debian's package: `apt-get install wrk`), against the server on disk
storage and on S3 storage (the tests' in-process S3 server, `examples/s3_server.rs`, on
loopback), and the server's peak resident memory during each.

Run from the repository root:

    python3 bench/bench_serve.py                 # builds the binary and the S3 server
    python3 bench/bench_serve.py --seconds 5

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
"""

import argparse
import hashlib
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import BenchError, progress  # noqa: E402
from bench_s3 import ACCESS_KEY, SECRET_KEY, Server as S3Server, build  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
CONNECTIONS = 64


def entry(body):
    """An entry in the format of docs/format.md: raw body, put time now."""
    header = b"GRCENTRY" + struct.pack("<HH", 1, 0) + hashlib.sha256(body).digest()
    header += struct.pack("<QQ", len(body), time.time_ns())
    return header + body


def start_serve(binary, tmp, storage_args, env=None):
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write(f"rw {TOKEN}\n")
    argv = [binary, "serve", "--listen", "127.0.0.1:0", "--token-file", tokens, *storage_args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    line = proc.stderr.readline()
    match = re.search(r"serving (https?://\S+) from", line)
    if not match:
        proc.kill()
        raise BenchError(f"serve did not start: {line!r}")
    return proc, match.group(1)


def put(url, key, data):
    request = urllib.request.Request(f"{url}/v1/ac/{key}", data=data, method="PUT",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        if response.status not in (200, 201):
            raise BenchError(f"PUT {key}: {response.status}")


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def wrk(url, seconds):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {TOKEN}", url],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"wrk failed: {out.stderr}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        raise BenchError(f"{non2xx.group(1)} requests were not hits:\n{text}")

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, percentile(50), percentile(99)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk run per case (default 10)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: apt-get install wrk")
    command = shlex.join(["python3", *sys.argv])
    binary, server_path = build()
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-serve-")
    s3 = S3Server(server_path, [0])
    rows = []
    try:
        storages = [
            ("disk", ["--storage-dir", os.path.join(tmp, "storage")], None),
            ("S3", ["--s3-bucket", "gocache", "--s3-prefix", "serve-bench", "--s3-endpoint", s3.proxies[0],
                    "--s3-region", "us-east-1", "--s3-force-path-style"],
             {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
              "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}),
        ]
        for name, storage_args, storage_env in storages:
            work = os.path.join(tmp, name)
            os.makedirs(work)
            proc, url = start_serve(binary, work, storage_args, storage_env)
            try:
                for size, label in ((1024, "1 KiB"), (1 << 20, "1 MiB")):
                    key = hashlib.sha256(f"{name}-{size}".encode()).hexdigest()
                    put(url, key, entry(os.urandom(size)))
                    progress(f"wrk: {label} hits on {name} storage, {CONNECTIONS} connections...", end=" ")
                    rps, p50, p99 = wrk(f"{url}/v1/ac/{key}", args.seconds)
                    progress(f"{rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
                    rows.append([f"{label} hits, {name} storage", f"{rps:.0f} req/s",
                                 "—", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "—", "—"])
                rss = peak_rss(proc.pid)
                rows.append([f"server peak RSS, {name} storage", bench.mib(rss), "—", "—", "—", "—"])
            finally:
                proc.terminate()
                proc.wait()
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = bench.markdown_table(
        "goremotecache serve benchmark", env,
        f"Command: `{command}`. wrk -t2 -c{CONNECTIONS} -d{args.seconds}s, client and server on the "
        "same 2 cores; S3 storage is the tests' in-process s3s server on loopback.", rows)
    bench.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_serve.py")
