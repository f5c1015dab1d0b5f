#!/usr/bin/env python3
"""Benchmark `goremotecache serve`: requests per second and p50/p99 latency of hits.

What it measures, in one run: GET hits of a 1 KiB and of a 1 MiB entry at 64 concurrent
connections, with wrk (Debian's package: `apt-get install wrk`), against the server on disk
storage beside bazel-remote v2.6.1 (the reference cache server of the field) on disk storage
too, then against the server on S3 storage (the tests' in-process S3 server,
`examples/s3_server.rs`, on loopback), and each server's peak resident memory.

Disk storage against bazel-remote: both servers run at once on the same cores, each holding
the same entry bytes (bazel-remote under `/ac/<key>` with `--disable_http_ac_validation`,
`--storage_mode uncompressed`, no access log, no authentication, a 10 GiB bound like
`serve`'s default); `serve` runs with its defaults and a token. Each case runs `--rounds`
times, alternating which server goes first; the table gives the median req/s of the rounds,
the p50/p99 latency of the median round, the ratio serve / bazel-remote (above 1: serve
answers more), and each server's CPU time per hit (user + system, from /proc: the figure that
other load on the machine disturbs least). bazel-remote is `go install`ed at exactly v2.6.1 into target/peers/bin unless
`--bazel-remote BIN` names one.

Run from the repository root:

    python3 bench/bench_serve.py                 # builds the binary and the S3 server
    python3 bench/bench_serve.py --seconds 5 --rounds 3 --no-s3

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
"""

import argparse
import hashlib
import os
import re
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402
from bench import BenchError, progress  # noqa: E402
from bench_s3 import ACCESS_KEY, SECRET_KEY, Server as S3Server  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
CONNECTIONS = 64
SIZES = ((1024, "1 KiB"), (1 << 20, "1 MiB"))

BAZEL_REMOTE = {
    "module": "github.com/buchgr/bazel-remote/v2",
    "package": "github.com/buchgr/bazel-remote/v2",
    "version": "v2.6.1",
    "binary": "bazel-remote",
}
BAZEL_REMOTE["module@version"] = f"{BAZEL_REMOTE['package']}@{BAZEL_REMOTE['version']}"


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(bench.REPO_ROOT, "target")


def build(with_s3):
    """cargo build --release of the binary (and of the example S3 server when wanted), into
    CARGO_TARGET_DIR when it is set; returns their paths."""
    argvs = [["cargo", "build", "--release"]]
    if with_s3:
        argvs.append(["cargo", "build", "--release", "--example", "s3_server", "--features", "s3-server-example"])
    progress("cargo build --release" + (" (binary and example s3_server)..." if with_s3 else "..."))
    for argv in argvs:
        if subprocess.run(argv, cwd=bench.REPO_ROOT).returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed")
    release = os.path.join(target_dir(), "release")
    return os.path.join(release, "goremotecache"), os.path.join(release, "examples", "s3_server")


def install_bazel_remote():
    """bazel-remote at exactly its pinned version in target/peers/bin, `go install`ed from a
    small module requiring it (the module proxy may refuse the version list that a plain
    `go install pkg@version` reads, see peers._pinning_module)."""
    gobin = os.path.join(bench.REPO_ROOT, "target", "peers", "bin")
    os.makedirs(gobin, exist_ok=True)
    path = os.path.join(gobin, BAZEL_REMOTE["binary"])
    if os.path.exists(path) and peers.installed_version(path) == BAZEL_REMOTE["version"]:
        return path
    progress(f"go install {BAZEL_REMOTE['module@version']}...")
    env = dict(os.environ, GOBIN=gobin, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    env.pop("GOCACHEPROG", None)
    try:
        moddir = peers._pinning_module(gobin, "bazel-remote", BAZEL_REMOTE, env)
    except peers.PeerError as err:
        raise BenchError(str(err)) from None
    result = subprocess.run(["go", "install", BAZEL_REMOTE["package"]], env=env, cwd=moddir,
                            capture_output=True, text=True)
    if result.returncode != 0 or not os.path.exists(path):
        raise BenchError(f"go install {BAZEL_REMOTE['module@version']} failed:\n{result.stderr.strip()}")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_bazel_remote(binary, tmp):
    """bazel-remote on disk storage in `tmp`, HTTP only, on a free loopback port; its URL."""
    port = free_port()
    log = open(os.path.join(tmp, "bazel-remote.log"), "w")
    argv = [binary, "--dir", os.path.join(tmp, "cache"), "--max_size", "10",
            "--http_address", f"127.0.0.1:{port}", "--grpc_address", "none",
            "--storage_mode", "uncompressed", "--disable_http_ac_validation",
            "--access_log_level", "none"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"bazel-remote exited at start (status {proc.returncode}): see {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/status", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise BenchError("bazel-remote did not answer /status within 30 s")


def put_bazel_remote(url, key, data):
    request = urllib.request.Request(f"{url}/ac/{key}", data=data, method="PUT")
    with urllib.request.urlopen(request) as response:
        if response.status not in (200, 201, 204):
            raise BenchError(f"bazel-remote PUT {key}: {response.status}")


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
    # Disk storage says what it indexed first; the "serving" line follows.
    seen = []
    for line in proc.stderr:
        seen.append(line)
        match = re.search(r"serving (https?://\S+) from", line)
        if match:
            return proc, match.group(1)
        if len(seen) >= 5:
            break
    proc.kill()
    raise BenchError(f"serve did not start: {''.join(seen)!r}")


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


def cpu_seconds(pid):
    """User plus system CPU time of a process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url, seconds, token=TOKEN):
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", *auth, url],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"wrk failed: {out.stderr}")
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        raise BenchError(f"{non2xx.group(1)} requests were not hits:\n{text}")

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rps, percentile(50), percentile(99), requests


def against_bazel_remote(binary, bazel_remote, tmp, seconds, rounds):
    """The disk-storage rows: serve and bazel-remote, `rounds` alternating rounds per size."""
    serve_dir = os.path.join(tmp, "serve-disk")
    br_dir = os.path.join(tmp, "bazel-remote")
    os.makedirs(serve_dir)
    os.makedirs(br_dir)
    serve, serve_url = start_serve(binary, serve_dir, ["--storage-dir", os.path.join(serve_dir, "storage")])
    procs = [serve]
    rows = []
    try:
        br, br_url = start_bazel_remote(bazel_remote, br_dir)
        procs.append(br)
        for size, label in SIZES:
            key = hashlib.sha256(f"disk-{size}".encode()).hexdigest()
            data = entry(os.urandom(size))
            put(serve_url, key, data)
            put_bazel_remote(br_url, key, data)
            targets = {"serve": (f"{serve_url}/v1/ac/{key}", TOKEN, serve.pid),
                       "bazel-remote": (f"{br_url}/ac/{key}", None, br.pid)}
            runs = {name: [] for name in targets}
            for round_ in range(rounds):
                order = list(targets) if round_ % 2 == 0 else list(targets)[::-1]
                for name in order:
                    url, token, pid = targets[name]
                    progress(f"round {round_ + 1}/{rounds}: {label} hits on {name}...", end=" ")
                    cpu = cpu_seconds(pid)
                    rps, p50, p99, requests = wrk(url, seconds, token)
                    cpu_us = (cpu_seconds(pid) - cpu) / requests * 1e6
                    progress(f"{rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, {cpu_us:.0f} us CPU/hit")
                    runs[name].append((rps, p50, p99, cpu_us))
            med = {}
            for name, results in runs.items():
                ranked = sorted(results)
                med[name] = ranked[len(ranked) // 2]
                all_rps = ", ".join(f"{r[0]:.0f}" for r in results)
                progress(f"{label} {name}: median {statistics.median(r[0] for r in results):.0f} req/s ({all_rps}), "
                         f"median {statistics.median(r[3] for r in results):.0f} us CPU/hit")
            s_cpu = statistics.median(r[3] for r in runs["serve"])
            b_cpu = statistics.median(r[3] for r in runs["bazel-remote"])
            (s_rps, s_p50, s_p99, _), (b_rps, b_p50, b_p99, _) = med["serve"], med["bazel-remote"]
            rows.append([f"{label} hits, disk storage, median of {rounds}", f"{s_rps:.0f} req/s",
                         f"{b_rps:.0f} req/s", f"{s_rps / b_rps:.2f}x", "> 1", bench.yes_no(s_rps > b_rps)])
            rows.append([f"{label} hits, latency of the median round", f"p50 {s_p50:.2f} ms, p99 {s_p99:.2f} ms",
                         f"p50 {b_p50:.2f} ms, p99 {b_p99:.2f} ms", "—", "—", "—"])
            rows.append([f"{label} hits, server CPU per hit (median)", f"{s_cpu:.0f} µs", f"{b_cpu:.0f} µs",
                         f"{s_cpu / b_cpu:.2f}x", "< 1", bench.yes_no(s_cpu < b_cpu)])
        s_rss, b_rss = peak_rss(serve.pid), peak_rss(br.pid)
        rows.append(["server peak RSS, disk storage", bench.mib(s_rss), bench.mib(b_rss),
                     f"{s_rss / b_rss:.2f}x", "—", "—"])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    return rows


def on_s3(binary, server_path, tmp, seconds):
    """The S3-storage rows: serve in front of the example S3 server, one run per size."""
    s3 = S3Server(server_path, [0])
    rows = []
    try:
        work = os.path.join(tmp, "S3")
        os.makedirs(work)
        proc, url = start_serve(binary, work, [
            "--s3-bucket", "gocache", "--s3-prefix", "serve-bench", "--s3-endpoint", s3.proxies[0],
            "--s3-region", "us-east-1", "--s3-force-path-style"],
            {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
             "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
        try:
            for size, label in SIZES:
                key = hashlib.sha256(f"S3-{size}".encode()).hexdigest()
                put(url, key, entry(os.urandom(size)))
                progress(f"wrk: {label} hits on S3 storage, {CONNECTIONS} connections...", end=" ")
                rps, p50, p99, _ = wrk(f"{url}/v1/ac/{key}", seconds)
                progress(f"{rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
                rows.append([f"{label} hits, S3 storage", f"{rps:.0f} req/s",
                             "—", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "—", "—"])
            rows.append(["server peak RSS, S3 storage", bench.mib(peak_rss(proc.pid)), "—", "—", "—", "—"])
        finally:
            proc.terminate()
            proc.wait()
    finally:
        s3.stop()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk run per case (default 10)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating rounds per size against bazel-remote; the median is kept (default 5)")
    parser.add_argument("--bin", help="the goremotecache binary to run (default: cargo build --release)")
    parser.add_argument("--bazel-remote", metavar="BIN",
                        help="the bazel-remote binary (default: go install it at v2.6.1 into target/peers/bin)")
    parser.add_argument("--no-s3", action="store_true", help="skip the runs on S3 storage")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: apt-get install wrk")
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    command = shlex.join(["python3", *sys.argv])
    built, server_path = build(not args.no_s3) if not (args.bin and args.no_s3) else (None, None)
    binary = os.path.abspath(args.bin) if args.bin else built
    bazel_remote = os.path.abspath(args.bazel_remote) if args.bazel_remote else install_bazel_remote()
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-serve-")
    try:
        rows = against_bazel_remote(binary, bazel_remote, tmp, args.seconds, args.rounds)
        if not args.no_s3:
            rows += on_s3(binary, server_path, tmp, args.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = bench.markdown_table(
        "goremotecache serve benchmark", env,
        f"Command: `{command}`. wrk -t2 -c{CONNECTIONS} -d{args.seconds}s, client and servers on the "
        "same cores; baseline: bazel-remote v2.6.1 on disk storage (uncompressed, no access log), run "
        "at the same time, rounds alternating; S3 storage is the tests' in-process s3s server on loopback.",
        rows)
    bench.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_serve.py")
