#!/usr/bin/env python3
"""Benchmark the local trim, and print the figures as Markdown.

1. A generated cache of --entries action entries (100,000 by default), each with an output of
   its own (sizes from 100 bytes to 64 KiB), half of them last used 10 days ago:
   `goremotecache trim --dry-run` (the scan alone) and `goremotecache trim` (removing that
   half), each timed, with its peak RSS from /usr/bin/time -v; the baseline is a script that
   removes the same files from a copy of the cache (lstat and unlink each, nothing more).
2. Warm `go build std` through goremotecache with the automatic trim on (the default) against
   `--trim=off` on the same cache, interleaved, and once more with every file of the cache
   made two hours old before each run: the worst case of the hourly refresh of a hit's file
   times, where every hit refreshes its two files. Ratios are of the medians; with the trim
   on or off a hit costs the same system calls, so the first ratio should be noise.

It only prints figures; it never asserts targets. Run from the repository root:

    python3 bench/bench_trim.py                  # builds target/release/goremotecache
    python3 bench/bench_trim.py --entries 20000 --runs 3 --bin target/release/goremotecache
"""

import argparse
import hashlib
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers of bench/bench.py)

DAY = 24 * 3600


def parse_args():
    parser = argparse.ArgumentParser(description="Benchmark goremotecache's local trim (prints Markdown).")
    parser.add_argument("--bin", help="goremotecache binary to use (default: cargo build --release)")
    parser.add_argument("--entries", type=int, default=100_000, help="entries in the generated cache (default 100000)")
    parser.add_argument("--runs", type=int, default=7, help="warm go build std runs of each (default 7)")
    parser.add_argument("--markdown", metavar="PATH", help="also write the Markdown section to PATH")
    args = parser.parse_args()
    if args.entries < 2 or args.runs < 1:
        parser.error("--entries must be at least 2 and --runs at least 1")
    return args


def generate_cache(root, count):
    """A cache of `count` entries with an output each; half of them used 10 days ago."""
    os.makedirs(os.path.join(root, "tmp"))
    now = time.time()
    total = 0
    for i in range(count):
        size = 100 + (i * 7919) % (64 << 10)
        body = i.to_bytes(8, "little") * (size // 8)
        output = hashlib.sha256(body).hexdigest()
        action = hashlib.sha256(b"action" + i.to_bytes(8, "little")).hexdigest()
        out_path = os.path.join(root, "o", output[:2], output)
        entry_path = os.path.join(root, "a", action[:2], action)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        os.makedirs(os.path.dirname(entry_path), exist_ok=True)
        with open(out_path, "wb") as f:
            f.write(body)
        with open(entry_path, "w") as f:
            f.write(f"v1 {output} {len(body)} {int(now * 1e9)}\n")
        if i % 2 == 0:
            for path in (out_path, entry_path):
                os.utime(path, (now - 10 * DAY, now - 10 * DAY))
        total += len(body)
        if (i + 1) % 20_000 == 0:
            bench.progress(f"  generated {i + 1}/{count} entries")
    return total


def timed_trim(binary, cache_dir, lock_dir, *extra):
    """Runs `goremotecache trim` under /usr/bin/time -v: (seconds, peak RSS bytes, report)."""
    argv = ["/usr/bin/time", "-v", binary, "trim", "--cache-dir", cache_dir, "--lock-dir", lock_dir, *extra]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise bench.BenchError(f"{shlex.join(argv)} failed:\n{result.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return elapsed, int(rss.group(1)) * 1024 if rss else None, result.stdout.strip()


def unlink_old(cache_dir):
    """The baseline: what a plain script does to remove the same files (lstat, unlink)."""
    start = time.perf_counter()
    cutoff = time.time() - 5 * DAY
    for kind in ("a", "o"):
        for dirpath, _, files in os.walk(os.path.join(cache_dir, kind)):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
    return time.perf_counter() - start


def bench_trim(binary, tmp, count):
    cache_dir = os.path.join(tmp, "trim-cache")
    baseline_dir = os.path.join(tmp, "baseline-cache")
    lock_dir = os.path.join(tmp, "trim-locks")
    bench.progress(f"generating two caches of {count} entries...")
    total = generate_cache(cache_dir, count)
    generate_cache(baseline_dir, count)
    os.sync()  # the files' writeback is not what is measured
    dry = timed_trim(binary, cache_dir, lock_dir, "--dry-run")
    bench.progress(f"trim --dry-run: {dry[0]:.2f}s, {dry[2]}")
    baseline = unlink_old(baseline_dir)
    bench.progress(f"baseline (lstat and unlink of the same files): {baseline:.2f}s")
    real = timed_trim(binary, cache_dir, lock_dir)
    bench.progress(f"trim: {real[0]:.2f}s, {real[2]}")
    return {"count": count, "bytes": total, "dry": dry, "real": real, "baseline": baseline}


def age_cache(cache_dir, seconds):
    at = time.time() - seconds
    for kind in ("a", "o"):
        for dirpath, _, files in os.walk(os.path.join(cache_dir, kind)):
            for name in files:
                os.utime(os.path.join(dirpath, name), (at, at))


def bench_builds(binary, tmp, runs):
    gocache = os.path.join(tmp, "gocache")
    cache_dir = os.path.join(tmp, "cache")
    lock_dir = os.path.join(tmp, "locks")
    os.makedirs(gocache)

    def prog(*extra):
        return shlex.join([binary, "--cache-dir", cache_dir, "--lock-dir", lock_dir, *extra])

    on = bench.go_env(gocache, prog())
    off = bench.go_env(gocache, prog("--trim=off"))
    bench.progress("cold go build std (goremotecache)...")
    bench.time_go_build_std(on, "cold")
    times = {"on": [], "off": [], "aged": []}
    for i in range(1, runs + 1):
        times["off"].append(bench.time_go_build_std(off, "--trim=off"))
        times["on"].append(bench.time_go_build_std(on, "trim on"))
        age_cache(cache_dir, 2 * 3600)
        times["aged"].append(bench.time_go_build_std(on, "trim on, files 2h old"))
        bench.progress(
            f"warm go build std {i}/{runs}: --trim=off {times['off'][-1]:.2f}s, "
            f"on {times['on'][-1]:.2f}s, on with files 2h old {times['aged'][-1]:.2f}s")
    return times


def markdown(env, trims, builds, binary, command):
    mib = bench.mib
    dry_s, dry_rss, _ = trims["dry"]
    real_s, real_rss, report = trims["real"]
    median = {k: statistics.median(v) for k, v in builds.items()}
    rows = [
        [f"trim --dry-run of {trims['count']:,} entries ({mib(trims['bytes'])} of outputs)", f"{dry_s:.2f} s",
         "", f"peak RSS {mib(dry_rss) if dry_rss else '?'}", "seconds, not minutes", ""],
        [f"trim removing half of {trims['count']:,} entries", f"{real_s:.2f} s",
         f"{trims['baseline']:.2f} s (a script's lstat and unlink of the same files)",
         f"{real_s / trims['baseline']:.2f}; peak RSS {mib(real_rss) if real_rss else '?'}",
         "seconds, not minutes", ""],
        ["warm go build std, automatic trim on (median)", f"{median['on']:.2f} s",
         f"{median['off']:.2f} s (--trim=off)", f"{median['on'] / median['off']:.2f}", "noise", ""],
        ["warm go build std, every file 2h old (each hit refreshes its times)", f"{median['aged']:.2f} s",
         f"{median['off']:.2f} s (--trim=off)", f"{median['aged'] / median['off']:.2f}", "", ""],
    ]
    return bench.markdown_table(
        "goremotecache local trim", env, f"Command: `{command}` (binary: `{binary}`)", rows,
        f"The trim's own report: `{report}`")


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    if not os.access("/usr/bin/time", os.X_OK):
        raise bench.BenchError("/usr/bin/time is needed for peak memory (apt-get install time)")
    binary = bench.resolve_binary(args.bin)
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-trim-")
    try:
        trims = bench_trim(binary, tmp, args.entries)
        builds = bench_builds(binary, tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = markdown(env, trims, builds, binary, command)
    bench.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_trim.py")
