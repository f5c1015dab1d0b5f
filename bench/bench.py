#!/usr/bin/env python3
"""Benchmark goremotecache against Go's own build cache, and print the figures as Markdown.

What it measures, in one run, side by side:

1. Warm `go build std` through Go's own cache (GOCACHE) versus through goremotecache
   (GOCACHEPROG): one cold build of each (timed), then N warm builds of each, interleaved
   (go, grc, go, grc, ...) to spread machine noise. Reports median and min, and the ratio of
   the medians (target: at most 1.05). The cold goremotecache run's stats file gives its
   peak RSS during a cold `go build std` (target: under 40 MiB).
   Beside them, interleaved the same way, warm builds through bench/memprog: a minimal
   GOCACHEPROG that answers every get from a map in memory (the protocol's floor: what remains
   is the go command's own side of GOCACHEPROG). Its row says how far goremotecache is from it.
2. Time from exec to the handshake line (median and p90; target: under 5 ms).
3. Peak RSS while storing one 35 MiB body, sent exactly as the go command sends a put
   (target: under 40 MiB), with the put's wall time and throughput.

It only prints figures; it never asserts targets. It fails loudly (exit status 1) when a go
command or the protocol exchange fails.

Run from the repository root:

    python3 bench/bench.py                 # builds target/release/goremotecache, 10 warm runs
    python3 bench/bench.py --quick         # smoke test: 3 warm runs, 50 handshakes
    python3 bench/bench.py --bin PATH --runs 20 --markdown results.md
    python3 bench/bench.py --runs 3 --handshake-runs 50   # what the quick check runs

Progress goes to stderr; the Markdown section goes to stdout (and to --markdown PATH).
A cold `go build std` takes a minute or more on a small machine, so expect several minutes.
"""

import argparse
import base64
import datetime
import hashlib
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
PUT_BODY_SIZE = 35 * MIB
RSS_TARGET = 40 * MIB
WARM_RATIO_TARGET = 1.05
HANDSHAKE_TARGET_MS = 5.0
HANDSHAKE = {"ID": 0, "KnownCommands": ["get", "put", "close"]}
B64_CHUNK = 3 * 256 * 1024  # a multiple of 3 bytes, so encoded chunks concatenate cleanly


class BenchError(Exception):
    """A failure that makes the figures meaningless: reported on stderr, exit status 1."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def progress(message, end="\n"):
    print(message, end=end, file=sys.stderr, flush=True)


def run_text(argv, cwd=None):
    """Runs a short command and returns its stripped stdout, or None if it cannot run."""
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def mib(n):
    return f"{n / MIB:.1f} MiB"


def secs(s):
    return f"{s:.2f} s"


def yes_no(ok):
    return "yes" if ok else "no"


def p90(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def compact_json(obj):
    return json.dumps(obj, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Setup


def parse_args():
    parser = argparse.ArgumentParser(
        description="Benchmark goremotecache against Go's own build cache (prints Markdown)."
    )
    parser.add_argument("--bin", help="goremotecache binary to use (default: cargo build --release)")
    parser.add_argument("--runs", type=int, default=10, help="warm go build std runs of each (default 10)")
    parser.add_argument("--handshake-runs", type=int, default=200, help="handshake timings (default 200)")
    parser.add_argument("--quick", action="store_true", help="smoke test: --runs 3 --handshake-runs 50")
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown section to PATH")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.handshake_runs = 3, 50
    if args.runs < 1 or args.handshake_runs < 1:
        parser.error("--runs and --handshake-runs must be at least 1")
    return args


def build_binary():
    progress("cargo build --release...")
    result = subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT)
    if result.returncode != 0:
        raise BenchError(f"cargo build --release failed (exit status {result.returncode})")
    return os.path.join(REPO_ROOT, "target", "release", "goremotecache")


def resolve_binary(path):
    binary = os.path.abspath(path) if path else build_binary()
    if not os.access(binary, os.X_OK):
        raise BenchError(f"not an executable: {binary}")
    return binary


def environment_summary():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "go": run_text(["go", "version"]) or "go version unknown",
        "nproc": run_text(["nproc"]) or str(os.cpu_count()),
        "commit": git_commit(),
    }


def git_commit():
    commit = run_text(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT)
    if commit is None:
        return "unknown"
    dirty = run_text(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
    return commit + (" (with uncommitted changes)" if dirty else "")


# ---------------------------------------------------------------------------------------------
# 1. go build std: Go's cache versus goremotecache


def go_env(gocache, gocacheprog=None):
    env = dict(os.environ)
    env.pop("GOCACHEPROG", None)
    env.update(GOCACHE=gocache, GOTOOLCHAIN="local", GOFLAGS="")
    if gocacheprog is not None:
        env["GOCACHEPROG"] = gocacheprog
    return env


def time_go_build_std(env, label):
    """Runs `go build std` with output discarded; returns its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(
        ["go", "build", "std"],
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise BenchError(
            f"go build std ({label}) failed with exit status {result.returncode}:\n{result.stderr}"
        )
    return elapsed


class GrcBuilds:
    """Runs go build std through goremotecache, one stats file per run."""

    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.gocache = os.path.join(tmp, "grc-gocache")
        self.cache_dir = os.path.join(tmp, "grc", "cache")
        self.lock_dir = os.path.join(tmp, "grc", "locks")
        os.makedirs(self.gocache)

    def stats_path(self, n):
        return os.path.join(self.tmp, f"stats-{n}.json")

    def run(self, n):
        prog = shlex.join([
            self.binary,
            "--cache-dir", self.cache_dir,
            "--lock-dir", self.lock_dir,
            "--stats-file", self.stats_path(n),
        ])
        return time_go_build_std(go_env(self.gocache, prog), "goremotecache")

    def stats(self, n):
        try:
            with open(self.stats_path(n)) as f:
                return json.load(f)
        except (OSError, ValueError) as err:
            raise BenchError(f"cannot read stats file {self.stats_path(n)}: {err}")


def build_bench_program(gobin, name):
    """`go build`s bench/<name> (bazelprog, memprog: standard library only) into gobin, never
    through a cache program; returns its path."""
    gobin = os.path.abspath(gobin)
    os.makedirs(gobin, exist_ok=True)
    path = os.path.join(gobin, name)
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
    env.pop("GOCACHEPROG", None)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    result = subprocess.run([go, "build", "-o", path, "."], env=env, capture_output=True, text=True,
                            cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), name))
    if result.returncode != 0:
        raise BenchError(f"go build of bench/{name} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return path


class MemprogBuilds:
    """Runs go build std through bench/memprog (the floor), on one directory of its own."""

    def __init__(self, tmp):
        binary = build_bench_program(os.path.join(REPO_ROOT, "target", "peers", "bin"), "memprog")
        self.gocache = os.path.join(tmp, "memprog-gocache")
        os.makedirs(self.gocache)
        self.prog = shlex.join([binary, "-dir", os.path.join(tmp, "memprog")])

    def run(self):
        return time_go_build_std(go_env(self.gocache, self.prog), "memprog")


def timed_progress(label, fn, *args):
    progress(f"{label}...", end=" ")
    elapsed = fn(*args)
    progress(f"{elapsed:.1f}s")
    return elapsed


def bench_go_build_std(binary, tmp, runs):
    go_cache = os.path.join(tmp, "gocache")
    os.makedirs(go_cache)
    go_env_plain = go_env(go_cache)
    grc = GrcBuilds(binary, tmp)

    cold_go = timed_progress("cold go build std (Go's cache)", time_go_build_std, go_env_plain, "Go's cache")
    cold_grc = timed_progress("cold go build std (goremotecache)", grc.run, 0)
    cold_stats = grc.stats(0)
    mem = MemprogBuilds(tmp)
    timed_progress("cold go build std (memprog)", mem.run)

    warm_go, warm_grc, warm_stats, warm_mem = [], [], [], []
    for i in range(1, runs + 1):
        warm_go.append(time_go_build_std(go_env_plain, "Go's cache"))
        warm_grc.append(grc.run(i))
        warm_stats.append(grc.stats(i))
        warm_mem.append(mem.run())
        progress(f"warm go build std {i}/{runs}: go {warm_go[-1]:.2f}s, goremotecache {warm_grc[-1]:.2f}s, "
                 f"memprog {warm_mem[-1]:.2f}s")

    return {
        "cold_go": cold_go,
        "cold_grc": cold_grc,
        "cold_stats": cold_stats,
        "warm_go": warm_go,
        "warm_grc": warm_grc,
        "warm_stats": warm_stats,
        "warm_mem": warm_mem,
    }


# ---------------------------------------------------------------------------------------------
# 2. Exec to handshake


def spawn(binary, tmp, *extra, stderr_path=None):
    argv = [
        binary,
        "--cache-dir", os.path.join(tmp, "cache"),
        "--lock-dir", os.path.join(tmp, "locks"),
        *extra,
    ]
    stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    finally:
        if stderr_path:
            stderr.close()


def read_handshake(proc, describe):
    line = proc.stdout.readline()
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if message != HANDSHAKE:
        proc.kill()
        proc.wait()
        raise BenchError(f"expected handshake {compact_json(HANDSHAKE)}, got {line!r}{describe()}")


def time_one_handshake(binary, tmp):
    start = time.perf_counter()
    proc = spawn(binary, tmp)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.stdin.close()
    status = proc.wait()
    proc.stdout.close()
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if message != HANDSHAKE:
        raise BenchError(f"expected handshake {compact_json(HANDSHAKE)}, got {line!r}")
    if status != 0:
        raise BenchError(f"goremotecache exited with status {status} after stdin was closed")
    return elapsed


def bench_handshake(binary, tmp, runs):
    progress(f"exec to handshake x{runs}...", end=" ")
    work = os.path.join(tmp, "handshake")
    times_ms = [1000 * time_one_handshake(binary, work) for _ in range(runs)]
    result = {"median_ms": statistics.median(times_ms), "p90_ms": p90(times_ms)}
    progress(f"median {result['median_ms']:.2f} ms, p90 {result['p90_ms']:.2f} ms")
    return result


def mean_round_trip_us(argv, greeting_lines, setup, request, count):
    """Reads `greeting_lines` lines from the program `argv`, sends each `setup` line reading one
    answer line after it, then times `count` requests sent one at a time, each followed by a
    read of its answer line; returns the mean round trip in microseconds."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    out = io.BufferedReader(proc.stdout, 65536)
    try:
        for _ in range(greeting_lines):
            out.readline()
        for line in setup:
            proc.stdin.write(line)
            out.readline()
        requests = [request(i) for i in range(count)]
        start = time.perf_counter()
        for line in requests:
            proc.stdin.write(line)
            if not out.readline():
                raise BenchError(f"{argv[0]} stopped answering")
        elapsed = time.perf_counter() - start
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
    return 1e6 * elapsed / count


def bench_round_trip(binary, tmp, count):
    """A get's round trip over the pipes, against `cat` echoing lines of the same size (the
    floor for any program at the other end of a pipe)."""
    progress(f"get round trip x{count}...", end=" ")
    work = os.path.join(tmp, "rtt")
    body = b"round trip"
    action = base64.b64encode(b"\x01" * 32).decode()
    output = base64.b64encode(hashlib.sha256(body).digest()).decode()
    put = (json.dumps({"ID": 1, "Command": "put", "ActionID": action, "OutputID": output,
                       "BodySize": len(body)}) + "\n\n\"" + base64.b64encode(body).decode() + "\"\n").encode()

    def get(i):
        return json.dumps({"ID": i + 2, "Command": "get", "ActionID": action}) + "\n"

    argv = [binary, "--cache-dir", os.path.join(work, "cache"), "--lock-dir", os.path.join(work, "locks")]
    grc = mean_round_trip_us(argv, 1, [put], lambda i: (get(i) + "\n").encode(), count)
    floor = mean_round_trip_us(["stdbuf", "-o0", "cat"], 0, [], lambda i: get(i).encode(), count)
    progress(f"goremotecache {grc:.1f} us, cat {floor:.1f} us")
    return {"grc_us": grc, "cat_us": floor, "count": count}


# ---------------------------------------------------------------------------------------------
# 3. Storing a 35 MiB body


def put_request_bytes(body):
    request = {
        "ID": 1,
        "Command": "put",
        "ActionID": base64.b64encode(os.urandom(32)).decode(),
        "OutputID": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "BodySize": len(body),
    }
    return (compact_json(request) + "\n\n").encode()


def write_put(stdin, header, body, errors):
    """Writes the put as the go command does: JSON line, blank line, quoted base64 line."""
    try:
        stdin.write(header)
        stdin.write(b'"')
        for offset in range(0, len(body), B64_CHUNK):
            stdin.write(base64.b64encode(body[offset:offset + B64_CHUNK]))
        stdin.write(b'"\n')
        stdin.flush()
    except OSError as err:
        errors.append(err)


def read_response(proc, want_id, describe):
    line = proc.stdout.readline()
    try:
        response = json.loads(line)
    except ValueError:
        raise BenchError(f"expected a response to request {want_id}, got {line!r}{describe()}")
    if response.get("Err"):
        raise BenchError(f"request {want_id} failed: {response['Err']}{describe()}")
    if response.get("ID") != want_id:
        raise BenchError(f"expected the response to request {want_id}, got {line!r}{describe()}")
    return response


def check_stored(path, body):
    try:
        with open(path, "rb") as f:
            stored = f.read()
    except OSError as err:
        raise BenchError(f"cannot read the stored body at DiskPath {path}: {err}")
    if stored != body:
        raise BenchError(f"the body stored at {path} differs from the body sent ({len(stored)} bytes)")


def bench_big_put(binary, tmp):
    progress(f"put of a {PUT_BODY_SIZE // MIB} MiB body...", end=" ")
    work = os.path.join(tmp, "put")
    os.makedirs(work)
    stats_path = os.path.join(work, "stats.json")
    stderr_path = os.path.join(work, "stderr.txt")
    body = os.urandom(PUT_BODY_SIZE)
    header = put_request_bytes(body)

    proc = spawn(binary, work, "--stats-file", stats_path, stderr_path=stderr_path)

    def describe():
        with open(stderr_path, errors="replace") as f:
            text = f.read().strip()
        return f"\ngoremotecache stderr:\n{text}" if text else ""

    try:
        read_handshake(proc, describe)
        errors = []
        writer = threading.Thread(target=write_put, args=(proc.stdin, header, body, errors))
        start = time.perf_counter()
        writer.start()
        response = read_response(proc, 1, describe)
        elapsed = time.perf_counter() - start
        writer.join()
        if errors:
            raise BenchError(f"writing the put failed: {errors[0]}{describe()}")
        if "DiskPath" not in response:
            raise BenchError(f"put response has no DiskPath: {compact_json(response)}")
        proc.stdin.write(b'{"ID":2,"Command":"close"}\n\n')
        proc.stdin.flush()
        read_response(proc, 2, describe)
        proc.stdin.close()
        status = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if status != 0:
        raise BenchError(f"goremotecache exited with status {status}{describe()}")
    check_stored(response["DiskPath"], body)

    with open(stats_path) as f:
        stats = json.load(f)
    result = {
        "seconds": elapsed,
        "mib_per_s": PUT_BODY_SIZE / MIB / elapsed,
        "peak_rss": stats.get("peak_rss_bytes"),
    }
    rss = mib(result["peak_rss"]) if result["peak_rss"] is not None else "unknown"
    progress(f"{elapsed:.2f}s, {result['mib_per_s']:.0f} MiB/s, peak RSS {rss}")
    return result


# ---------------------------------------------------------------------------------------------
# Report


def rss_row(label, rss):
    if rss is None:
        return [label, "unknown", "—", "unknown", f"< {RSS_TARGET // MIB} MiB", "unknown"]
    return [label, mib(rss), "—", mib(rss), f"< {RSS_TARGET // MIB} MiB", yes_no(rss < RSS_TARGET)]


def build_rows(builds, handshake, put, rtt, runs, handshake_runs):
    cold_go, cold_grc = builds["cold_go"], builds["cold_grc"]
    med_go, med_grc = statistics.median(builds["warm_go"]), statistics.median(builds["warm_grc"])
    min_go, min_grc = min(builds["warm_go"]), min(builds["warm_grc"])
    med_mem = statistics.median(builds["warm_mem"])
    ratio = med_grc / med_go
    gets = sum(s.get("gets", 0) for s in builds["warm_stats"])
    hits = sum(s.get("hits", 0) for s in builds["warm_stats"])
    cold = builds["cold_stats"]
    hs_target = f"< {HANDSHAKE_TARGET_MS:g} ms"
    return [
        ["cold `go build std`", secs(cold_grc), secs(cold_go), f"{cold_grc / cold_go:.2f}×", "—", "—"],
        [f"warm `go build std`, median of {runs}", secs(med_grc), secs(med_go), f"{ratio:.3f}×",
         f"≤ {WARM_RATIO_TARGET:.2f}×", yes_no(ratio <= WARM_RATIO_TARGET)],
        [f"warm `go build std`, min of {runs}", secs(min_grc), secs(min_go), f"{min_grc / min_go:.3f}×", "—", "—"],
        [f"warm `go build std`, median of {runs}, baseline: the floor (bench/memprog)", secs(med_grc),
         secs(med_mem), f"{med_grc / med_mem:.3f}×", "—", "—"],
        [f"warm `go build std` through bench/memprog, median of {runs} (ratio: memprog / Go's cache)",
         "—", secs(med_go), f"{med_mem / med_go:.3f}× ({secs(med_mem)})", "—", "—"],
        ["warm runs: hits / gets (goremotecache)", f"{hits} / {gets}", "—",
         f"{100 * hits / gets:.1f}% hits" if gets else "no gets", "—", "—"],
        ["cold run: puts, bytes written (goremotecache)", f"{cold.get('puts', 0)} puts",
         "—", mib(cold.get("put_bytes", 0)), "—", "—"],
        rss_row("peak RSS during a cold `go build std`", cold.get("peak_rss_bytes")),
        [f"exec to handshake, median of {handshake_runs}", f"{handshake['median_ms']:.2f} ms", "—",
         f"{handshake['median_ms']:.2f} ms", hs_target, yes_no(handshake["median_ms"] < HANDSHAKE_TARGET_MS)],
        [f"exec to handshake, p90 of {handshake_runs}", f"{handshake['p90_ms']:.2f} ms", "—",
         f"{handshake['p90_ms']:.2f} ms", hs_target, yes_no(handshake["p90_ms"] < HANDSHAKE_TARGET_MS)],
        [f"get round trip, mean of {rtt['count']} sequential (baseline: `cat` echo)",
         f"{rtt['grc_us']:.1f} µs", f"{rtt['cat_us']:.1f} µs", f"{rtt['grc_us'] / rtt['cat_us']:.2f}×", "—", "—"],
        rss_row(f"peak RSS storing a {PUT_BODY_SIZE // MIB} MiB put", put["peak_rss"]),
        [f"{PUT_BODY_SIZE // MIB} MiB put: wall time, throughput", secs(put["seconds"]), "—",
         f"{put['mib_per_s']:.0f} MiB/s", "—", "—"],
    ]


def publish(text, path=None):
    """Prints a benchmark's Markdown result, and writes it to `path` too (--markdown)."""
    sys.stdout.write(text)
    if path:
        with open(path, "w") as f:
            f.write(text)


def run(main, name):
    """Runs a benchmark's `main` as the script `name`: its return value is the exit status; a
    BenchError is one line on stderr and status 1; ^C is status 130."""
    try:
        sys.exit(main())
    except BenchError as err:
        print(f"\n{name}: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def markdown_table(title, env, intro, rows, note=None):
    """A Markdown section: a heading with the machine and commit, an intro line, the table."""
    header = ["measurement", "goremotecache", "baseline", "ratio or value", "target", "met"]
    lines = [
        f"### {title} — {env['date']}, {env['go']}, nproc {env['nproc']}, commit {env['commit']}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def markdown(env, rows, binary, command):
    return markdown_table(
        "goremotecache benchmark", env, f"Command: `{command}` (binary: `{binary}`)", rows,
        "Baseline: Go's own cache (GOCACHE, GOCACHEPROG unset). Warm runs interleave Go's cache "
        "and goremotecache (and bench/memprog, a GOCACHEPROG answering from memory: the floor any "
        "GOCACHEPROG program can reach); ratio = goremotecache / baseline.")


# ---------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    if shutil.which("go") is None:
        raise BenchError("no go command on PATH")
    binary = resolve_binary(args.bin)
    env = environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-")
    try:
        builds = bench_go_build_std(binary, tmp, args.runs)
        handshake = bench_handshake(binary, tmp, args.handshake_runs)
        rtt = bench_round_trip(binary, tmp, 3000)
        put = bench_big_put(binary, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = markdown(env, build_rows(builds, handshake, put, rtt, args.runs, args.handshake_runs), binary, command)
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    run(main, "bench.py")
