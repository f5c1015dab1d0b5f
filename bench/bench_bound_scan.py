#!/usr/bin/env python3
"""Benchmark the start of `goremotecache serve --storage-dir` on a large storage directory.

At start the server indexes its storage directory for `--max-size` (src/store/bounded.rs):
it lists every shard of `v1/`, reads each entry's size and mtime, and orders the entries by
mtime. This script fills a directory with N entry files (1,000,000 by default) in the
server's layout, `v1/<xx>/<actionid-hex>`, with sizes of 100 bytes to 1 MiB and mtimes
spread over 30 days; the files are sparse (their length is set, no data is written: the scan
reads names and metadata only), so a million of them take inodes but almost no blocks. Then
it starts the server on it several times and reports:

- the time from starting the process to its "serving" line (what a restart costs),
- the scan's own time, as the server says it ("indexed in ...s"),
- the server's peak resident memory once it is serving, from `/usr/bin/time -v` (GNU time,
  Debian's `time` package),
- the baseline, measured after each start: `find` printing every entry's size and mtime,
  which is the `lstat` of every file that the scan cannot avoid; the ratio is of the medians.

With --drop-caches (root only) each start begins with the kernel's dentry, inode and page
caches dropped (`echo 3 > /proc/sys/vm/drop_caches`): a server started after a reboot.
Without it the directory is in the cache, as after a restart of the server alone.

Run from the repository root:

    python3 bench/bench_bound_scan.py                        # cargo build --release first
    python3 bench/bench_bound_scan.py --bin target/debug/goremotecache --entries 100000
    python3 bench/bench_bound_scan.py --dir /var/tmp/scan-1m  # keep the entries for next time

Progress goes to stderr; the figures go to stdout.
"""

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import BenchError, progress  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
DAY = 86400


def fill(root, entries, seed=1):
    """Creates `entries` sparse entry files under root/v1 (skips if as many are there);
    returns their total size."""
    marker = os.path.join(root, f".filled-{entries}")
    if os.path.exists(marker):
        progress(f"{root}: {entries} entries there already")
        with open(marker) as f:
            return int(f.read())
    total = 0
    rng = random.Random(seed)
    now = time.time()
    started = time.monotonic()
    for shard in range(256):
        os.makedirs(os.path.join(root, "v1", f"{shard:02x}"), exist_ok=True)
    for n in range(entries):
        name = "%064x" % rng.getrandbits(256)
        path = os.path.join(root, "v1", name[:2], name)
        # Go's outputs: half under 300 bytes, one in ten over 240 KiB (docs/design.md).
        size = rng.choice((100, 200, 300, 2000, 20000, 250000, 1 << 20))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        total += size
        mtime = now - rng.random() * 30 * DAY
        os.utime(fd, (mtime, mtime))
        os.close(fd)
        if n and n % 100_000 == 0:
            progress(f"  {n} entries created ({time.monotonic() - started:.0f}s)")
    with open(marker, "w") as f:
        f.write(str(total))
    progress(f"{entries} entries ({total / 2**30:.0f} GiB) created in "
              f"{time.monotonic() - started:.0f}s")
    return total


def start_once(binary, root, tmp, drop_caches, max_size):
    """Starts the server on root under GNU time; returns (seconds to serving, the scan's own
    seconds, peak RSS bytes)."""
    if drop_caches:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    timing = os.path.join(tmp, "time.txt")
    argv = ["/usr/bin/time", "-v", "-o", timing, binary, "serve", "--listen", "127.0.0.1:0",
            "--storage-dir", root, "--tokens", f"rw:{TOKEN}", "--max-size", max_size]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    scan = None
    for line in proc.stderr:
        match = re.search(r"indexed in ([0-9.]+)s", line)
        if match:
            scan = float(match.group(1))
        if "serving " in line:
            break
    else:
        proc.wait()
        raise BenchError("the server did not start")
    ready = time.monotonic() - started
    # The server is time's child: it gets the signal (time would die of it and leave the
    # server running), and time then reports on it.
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        server = int(f.read().split()[0])
    os.kill(server, signal.SIGTERM)
    proc.stderr.read()
    proc.wait()
    with open(timing) as f:
        text = f.read()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not match:
        raise BenchError(f"no peak RSS in /usr/bin/time's output:\n{text}")
    return ready, scan, int(match.group(1)) * 1024


def find_stat(root, drop_caches):
    """The baseline: `find` printing every entry's size and mtime (one lstat each), timed."""
    if drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    start = time.perf_counter()
    result = subprocess.run(["find", os.path.join(root, "v1"), "-type", "f", "-printf", "%s %T@\n"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise BenchError(f"find failed: {result.stderr}")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bin", help="the goremotecache binary (default: cargo build --release)")
    parser.add_argument("--dir", help="storage directory to fill and keep (default: a temporary one)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the kernel's caches before each start (root)")
    args = parser.parse_args()
    if not os.path.exists("/usr/bin/time"):
        raise BenchError("needs GNU time at /usr/bin/time (apt-get install time)")
    binary = args.bin
    if not binary:
        progress("cargo build --release...")
        if subprocess.run(["cargo", "build", "--release"], cwd=bench.REPO_ROOT).returncode != 0:
            raise BenchError("cargo build --release failed")
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(bench.REPO_ROOT, "target"))
        binary = os.path.join(target, "release", "goremotecache")
    tmp = tempfile.mkdtemp(prefix="bench-bound-scan-")
    root = args.dir or os.path.join(tmp, "storage")
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        total = fill(root, args.entries)
        # A bound above what is stored: the start is measured, not an eviction.
        max_size = f"{(total >> 30) + 1}GiB"
        results, baselines = [], []
        for run in range(args.runs):
            ready, scan, rss = start_once(binary, root, tmp, args.drop_caches, max_size)
            baselines.append(find_stat(root, args.drop_caches))
            progress(f"  start {run + 1}: serving after {ready:.2f}s (scan {scan:.2f}s), "
                     f"peak RSS {rss / 2**20:.0f} MiB; find -printf of the same files "
                     f"{baselines[-1]:.2f}s")
            results.append((ready, scan, rss))
        ready = sorted(r[0] for r in results)[len(results) // 2]
        scan = sorted(r[1] for r in results)[len(results) // 2]
        rss = max(r[2] for r in results)
        baseline = sorted(baselines)[len(baselines) // 2]
        cache = "caches dropped before each start" if args.drop_caches else "directory in the page cache"
        print(f"serve start-up on {args.entries} entries ({cache}, {os.cpu_count()} CPUs, "
              f"median of {args.runs}): serving after {ready:.2f}s, scan {scan:.2f}s, "
              f"peak RSS {rss / 2**20:.0f} MiB ({rss / args.entries:.0f} bytes an entry); "
              f"baseline `find -printf '%s %T@'` of the same files {baseline:.2f}s, "
              f"ratio {ready / baseline:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as err:
        progress(f"error: {err}")
        sys.exit(1)
