#!/usr/bin/env python3
"""Benchmark the per-machine daemon: `goremotecache connect` against the direct mode.

What it measures, in one run, side by side (the daemon's rows against a baseline):

1. Warm `go build std` on local disk only (no remote): direct
   (`GOCACHEPROG="goremotecache --cache-dir X ..."`) against connect
   (`GOCACHEPROG="goremotecache connect --cache-dir X ..."`), the same warm cache directory,
   the daemon already running (a cold build through connect fills the cache and starts
   it), runs alternating direct, connect, direct, ... (--runs of each): medians and the
   ratio connect / direct (target: at most 1.05). Then exec to handshake (first stdout
   line, stdin a pipe), alternating, --handshake-runs of each: median (target: under 5 ms
   for connect, the daemon running).
2. Cold `go build std` uploading to an empty bucket prefix at +--delay ms (the example S3
   server of the tests behind its delay proxy): direct (its close waits for the uploads)
   against connect then `goremotecache flush`: the go command's wall time alone, and with
   the flush (--cold-runs of each, alternating; each takes minutes). A fresh cache directory
   and a fresh bucket prefix for each. Both builds name a prefetch key, so each writes the
   prefetch manifest (direct at close, the daemon at the flush).
3. A fresh machine building from a warm bucket at +--delay ms, through connect with
   `--prefetch-key`: with a warm-up (`goremotecache warm` started, --warm-lead seconds of
   sleep, then the build) against without one (connect starts the daemon), alternating,
   --fresh-runs of each: the go command's wall time (median; target: the warm-up faster),
   and from `status` what prefetch had fetched and what the daemon still got from the
   bucket. The warm bucket is the one the direct build of 2 filled, manifest included; the
   fresh machines are `--remote-mode read-only`, so that none rewrites the manifest the
   next reads. A fresh cache directory each.

Every daemon it starts it stops (SIGTERM to the pid of its record in <cache-dir>/daemon/,
then waiting for it to exit) at the end of its measurement, and again on the way out.
It only prints figures; it never asserts targets. It fails (exit status 1) when a go
command or a goremotecache command fails.

Run from the repository root:

    python3 bench/bench_daemon.py                 # builds the binary and the server
    python3 bench/bench_daemon.py --runs 10 --markdown daemon.md

Progress goes to stderr; the Markdown table goes to stdout (and to --markdown PATH).
Three cold `go build std` run, so expect several minutes.
"""

import argparse
import ctypes
import glob
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers of bench.py)
from bench import BenchError, go_env, progress, secs, time_go_build_std  # noqa: E402
from bench_s3 import ACCESS_KEY, SECRET_KEY, Server, build  # noqa: E402

PREFETCH_KEY = "bench-daemon"
STOP_WAIT = 60.0  # seconds a daemon may take to exit after SIGTERM (nothing is pending)
PR_SET_CHILD_SUBREAPER = 36


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm builds of each mode (default 5)")
    parser.add_argument("--handshake-runs", type=int, default=20, help="handshakes of each mode (default 20)")
    parser.add_argument("--delay", type=int, default=30, help="added round trip in ms (default 30)")
    parser.add_argument("--cold-runs", type=int, default=1,
                        help="cold uploading builds of each mode (default 1; each takes minutes)")
    parser.add_argument("--fresh-runs", type=int, default=3,
                        help="fresh machines with a warm-up and without, alternating (default 3)")
    parser.add_argument("--warm-lead", type=float, default=2.0,
                        help="seconds between `warm` and the build (default 2)")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args()
    if min(args.runs, args.handshake_runs, args.cold_runs, args.fresh_runs) < 1:
        parser.error("--runs, --handshake-runs, --cold-runs and --fresh-runs must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------
# Daemons: finding and stopping them


def become_subreaper():
    """Daemons outlive the `connect` or `warm` that started them; as a subreaper this
    process inherits them, so it can reap them (a container's init may not, leaving zombies
    that look alive). Linux only; elsewhere /proc decides whether a daemon is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def gone(pid):
    """Whether process `pid` has exited: reaped here, or absent (or a zombie) in /proc."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def daemon_pids(cache_dir):
    """The pids in the daemons' records of `cache_dir` (<cache-dir>/daemon/<fp>.json)."""
    pids = []
    for path in glob.glob(os.path.join(cache_dir, "daemon", "*.json")):
        try:
            with open(path) as f:
                pids.append(int(json.load(f)["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return pids


def stop_daemons(cache_dir):
    """SIGTERM to every daemon of `cache_dir`, then waits for each to exit (SIGKILL after
    STOP_WAIT, said on stderr). Returns how many were stopped."""
    pids = [pid for pid in daemon_pids(cache_dir) if not gone(pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_WAIT
    for pid in pids:
        while not gone(pid):
            if time.monotonic() > deadline:
                progress(f"daemon {pid} still running {STOP_WAIT:.0f}s after SIGTERM: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + STOP_WAIT
            time.sleep(0.02)
    return len(pids)


# ---------------------------------------------------------------------------------------------
# A machine: its directories and its goremotecache options


class Machine:
    """One machine's goremotecache settings (its own cache, lock and GOCACHE directories, the
    bucket prefix it writes, or local disk only), in direct mode, through connect, and for
    the daemon commands."""

    def __init__(self, tmp, name, binary, endpoint=None, prefix=None, extra=()):
        self.dir = os.path.join(tmp, name)
        self.cache_dir = os.path.join(self.dir, "cache")
        self.gocache = os.path.join(self.dir, "gocache")
        os.makedirs(self.gocache)
        self.binary = binary
        self.endpoint = endpoint
        self.prefix = prefix
        self.extra = list(extra)
        self.runs = 0

    def options(self):
        options = ["--cache-dir", self.cache_dir, "--lock-dir", os.path.join(self.dir, "locks")]
        if self.endpoint:
            options += ["--s3-bucket", "gocache", "--s3-prefix", self.prefix, "--s3-endpoint", self.endpoint,
                        "--s3-region", "us-east-1", "--s3-force-path-style", "--upload-wait", "10m"]
        return options + self.extra

    def env(self, gocacheprog=None):
        """The environment of the go command and of the daemon commands: the credential
        variables are part of a daemon's fingerprint, so every command gets the same."""
        env = go_env(self.gocache, gocacheprog)
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
            env.pop(name, None)
        for name in [n for n in env if n.startswith("GOREMOTECACHE_")]:
            del env[name]
        return env

    def argv(self, mode, *more):
        """The command line of `mode`: "direct", or a subcommand (connect, flush, ...)."""
        sub = [] if mode == "direct" else [mode]
        return [self.binary, *sub, *self.options(), *more]

    def build(self, mode, label, quiet=False):
        """`go build std` with GOCACHEPROG in `mode` (direct or connect); its wall time and
        the session's stats file."""
        self.runs += 1
        stats_file = os.path.join(self.dir, f"stats-{self.runs}.json")
        env = self.env(shlex.join(self.argv(mode, "--stats-file", stats_file)))
        if not quiet:
            progress(f"{label}...", end=" ")
        seconds = time_go_build_std(env, label)
        try:
            with open(stats_file) as f:
                stats = json.load(f)
        except (OSError, ValueError) as err:
            raise BenchError(f"cannot read the stats file of {label}: {err}")
        if not quiet:
            progress(secs(seconds))
        return seconds, stats

    def command(self, mode, *more):
        """Runs a daemon command (flush, status, warm); its wall time and stdout."""
        argv = self.argv(mode, *more)
        start = time.perf_counter()
        result = subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed with exit status {result.returncode}:\n"
                             f"{result.stderr}")
        return seconds, result.stdout

    def status(self):
        """`status --json` of this machine's daemon (one JSON line per daemon)."""
        _, out = self.command("status", "--json")
        daemons = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(daemons) != 1:
            raise BenchError(f"expected the status of one daemon under {self.cache_dir}, got {out!r}")
        return daemons[0]

    def stop(self):
        stopped = stop_daemons(self.cache_dir)
        progress(f"stopped {stopped} daemon(s) of {os.path.basename(self.dir)}")


def time_handshake(argv, env):
    """Seconds from exec to the handshake line on stdout (stdin a pipe, then closed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.stdin.close()
    proc.stdout.read()
    proc.stdout.close()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    status = proc.wait()
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if message != bench.HANDSHAKE:
        raise BenchError(f"{shlex.join(argv)}: expected the handshake, got {line!r}\n{stderr}")
    if status != 0:
        raise BenchError(f"{shlex.join(argv)} exited with status {status} after stdin was closed\n{stderr}")
    return elapsed


def hits_of(stats):
    return sum(s.get("hits", 0) for s in stats), sum(s.get("gets", 0) for s in stats)


# ---------------------------------------------------------------------------------------------
# 1. Warm local builds and the handshake: direct against connect


def bench_local(tmp, binary, runs, handshake_runs):
    machine = Machine(tmp, "local", binary)
    try:
        machine.build("connect", "cold go build std through connect, local disk (fills the cache)")
        status = machine.status()
        progress(f"daemon {status['pid']} running, {status['sessions_total']} session(s) served")
        machine.build("direct", "warm-up", quiet=True)
        times = {"direct": [], "connect": []}
        stats = {"direct": [], "connect": []}
        for i in range(1, runs + 1):
            for mode in ("direct", "connect"):
                seconds, s = machine.build(mode, f"warm go build std ({mode})", quiet=True)
                times[mode].append(seconds)
                stats[mode].append(s)
            progress(f"warm go build std {i}/{runs}: direct {times['direct'][-1]:.2f}s, "
                     f"connect {times['connect'][-1]:.2f}s")
        handshakes = {"direct": [], "connect": []}
        progress(f"exec to handshake x{handshake_runs} of each...", end=" ")
        for _ in range(handshake_runs):
            for mode in ("direct", "connect"):
                handshakes[mode].append(1000 * time_handshake(machine.argv(mode), machine.env()))
        medians = {mode: statistics.median(ms) for mode, ms in handshakes.items()}
        progress(f"median direct {medians['direct']:.2f} ms, connect {medians['connect']:.2f} ms")
        # A daemon that had died would have sent connect direct: still the same one?
        after = machine.status()
        if after["pid"] != status["pid"]:
            raise BenchError(f"the daemon changed during the runs: pid {status['pid']} then {after['pid']}")
    finally:
        machine.stop()
    return {"times": times, "stats": stats, "handshakes": handshakes}


def local_rows(local, runs, handshake_runs):
    t, h = local["times"], local["handshakes"]
    med_d, med_c = statistics.median(t["direct"]), statistics.median(t["connect"])
    min_d, min_c = min(t["direct"]), min(t["connect"])
    ratio = med_c / med_d
    hits_c, gets_c = hits_of(local["stats"]["connect"])
    hits_d, gets_d = hits_of(local["stats"]["direct"])
    hs_d, hs_c = statistics.median(h["direct"]), statistics.median(h["connect"])
    p90_d, p90_c = bench.p90(h["direct"]), bench.p90(h["connect"])
    target = bench.HANDSHAKE_TARGET_MS
    return [
        [f"1. warm `go build std`, local disk: connect vs direct, median of {runs} (ABAB)",
         secs(med_c), secs(med_d), f"{ratio:.3f}×", f"≤ {bench.WARM_RATIO_TARGET:.2f}×",
         bench.yes_no(ratio <= bench.WARM_RATIO_TARGET)],
        [f"  min of {runs}", secs(min_c), secs(min_d), f"{min_c / min_d:.3f}×", "—", "—"],
        ["  hits / gets over the warm runs", f"{hits_c} / {gets_c}", f"{hits_d} / {gets_d}", "—", "—", "—"],
        [f"  exec to handshake, median of {handshake_runs}: connect (daemon running) vs direct",
         f"{hs_c:.2f} ms", f"{hs_d:.2f} ms", f"{hs_c / hs_d:.2f}×", f"< {target:g} ms",
         bench.yes_no(hs_c < target)],
        [f"  exec to handshake, p90 of {handshake_runs}", f"{p90_c:.2f} ms", f"{p90_d:.2f} ms",
         f"{p90_c / p90_d:.2f}×", "—", "—"],
    ]


# ---------------------------------------------------------------------------------------------
# 2. Cold builds uploading: direct (close waits) against connect then flush


def cold_upload(tmp, binary, endpoint, delay, run):
    """One cold build of each, a fresh cache directory and bucket prefix for each."""
    extra = ["--prefetch-key", PREFETCH_KEY]
    # The first run's direct build fills the prefix that 3 reads.
    suffix = f"-{run}" if run else ""
    direct = Machine(tmp, f"cold-direct{suffix}", binary, endpoint, f"cold-direct{suffix}", extra)
    daemon = Machine(tmp, f"cold-daemon{suffix}", binary, endpoint, f"cold-daemon{suffix}", extra)
    result = {}
    try:
        result["direct"], stats = direct.build("direct", f"cold go build std, direct, uploading at +{delay} ms")
        remote = stats["remote"]
        result["close_wait"] = remote["close_wait_seconds"]
        result["direct_uploads"] = (remote["uploads"], remote["uploads_dropped"], remote["upload_errors"])
        result["daemon"], _ = daemon.build("connect", f"cold go build std, connect, uploading at +{delay} ms")
        result["pending"] = daemon.status()["uploads_pending"]
        progress("flush...", end=" ")
        result["flush"], line = daemon.command("flush")
        progress(f"{secs(result['flush'])} ({result['pending']} uploads pending before it): {line.strip()}")
        status = daemon.status()
        result["daemon_uploads"] = (status["uploads_done"], status["uploads_dropped"], status["upload_errors"])
        result["left"] = status["uploads_pending"]
    finally:
        daemon.stop()
    return result


def cold_rows(colds, delay):
    runs = len(colds)

    def median(key):
        return statistics.median(r[key] for r in colds)

    def each(fn):
        return " · ".join(fn(r) for r in colds)

    def uploads(key):
        return each(lambda r: "{} / {} / {}".format(*r[key]))

    d, c = median("direct"), median("daemon")
    total = statistics.median(r["daemon"] + r["flush"] for r in colds)
    return [
        [f"2. cold `go build std` uploading at +{delay} ms: go command, connect vs direct, median of {runs}",
         secs(c), secs(d), f"{c / d:.2f}×", "—", "—"],
        ["  each run", each(lambda r: f"{r['daemon']:.2f} s"), each(lambda r: f"{r['direct']:.2f} s"), "—", "—", "—"],
        ["  go command + flush (direct: its close waits)", secs(total), secs(d), f"{total / d:.2f}×", "—", "—"],
        ["  flush (connect) vs direct's close wait, each run", each(lambda r: f"{r['flush']:.2f} s"),
         each(lambda r: f"{r['close_wait']:.2f} s"),
         "uploads pending at the flush: " + each(lambda r: str(r["pending"])), "—", "—"],
        ["  uploads: stored / dropped / errors, each run", uploads("daemon_uploads"), uploads("direct_uploads"),
         "left after the flush: " + each(lambda r: str(r["left"])), "—", "—"],
    ]


# ---------------------------------------------------------------------------------------------
# 3. A fresh machine from the warm bucket: connect with a warm-up against without


def fresh_build(tmp, binary, endpoint, name, warm_lead, delay):
    """A fresh machine's `go build std` through connect from the warm bucket, `warm` run
    `warm_lead` seconds before it (None: no warm-up). Read-only, so that no run rewrites
    the manifest the next one reads (a run's manifest puts its own entries first)."""
    machine = Machine(tmp, name, binary, endpoint, "cold-direct",
                      ["--prefetch-key", PREFETCH_KEY, "--remote-mode", "read-only"])
    label = f"fresh machine, warm bucket at +{delay} ms, connect"
    try:
        if warm_lead is not None:
            _, line = machine.command("warm")
            progress(f"warm: {line.strip()}; sleeping {warm_lead:g}s")
            time.sleep(warm_lead)
            label += " after warm"
        else:
            label += " without warm-up"
        seconds, _ = machine.build("connect", label)
        status = machine.status()
    finally:
        machine.stop()
    # The daemon's figures, from `status`: it served this one session.
    return {"seconds": seconds, "status": status}


def bench_fresh(tmp, binary, endpoint, delay, warm_lead, runs):
    """Fresh machines alternating with a warm-up and without (the warm-up first)."""
    result = {"warmed": [], "unwarmed": []}
    for run in range(runs):
        result["warmed"].append(fresh_build(tmp, binary, endpoint, f"fresh-warmed-{run}", warm_lead, delay))
        result["unwarmed"].append(fresh_build(tmp, binary, endpoint, f"fresh-unwarmed-{run}", None, delay))
    return result


def fresh_rows(fresh, delay, warm_lead, runs):
    warmed, unwarmed = fresh["warmed"], fresh["unwarmed"]
    w = statistics.median(r["seconds"] for r in warmed)
    c = statistics.median(r["seconds"] for r in unwarmed)

    def each(rs):
        return ", ".join(f"{r['seconds']:.2f}" for r in rs) + " s"

    def fetched(rs):
        p = [r["status"].get("prefetch") or {} for r in rs]
        return " · ".join(f"{x.get('fetched', 0)}/{x.get('listed', 0)} ({x.get('used', 0)})" for x in p)

    def remote(rs):
        return " · ".join(f"{r['status']['remote_hits']} / {r['status']['remote_misses']}" for r in rs)

    return [
        [f"3. fresh machine, warm bucket at +{delay} ms: go command, `warm` {warm_lead:g} s before vs "
         f"no warm-up, median of {runs}", secs(w), secs(c), f"{w / c:.2f}×", "< 1.00×", bench.yes_no(w < c)],
        ["  each run, in order (alternating, the warm-up first)", each(warmed), each(unwarmed), "—", "—", "—"],
        ["  prefetch at the build's end: fetched/listed (used), each run", fetched(warmed), fetched(unwarmed),
         "—", "—", "—"],
        ["  the daemon's remote hits / misses (gets prefetch had not served), each run",
         remote(warmed), remote(unwarmed), "—", "—", "—"],
    ]


# ---------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    command = shlex.join(["python3", *sys.argv])
    if shutil.which("go") is None:
        raise BenchError("no go command on PATH")
    become_subreaper()
    binary, server_path = build()
    env = bench.environment_summary()
    tmp = tempfile.mkdtemp(prefix="goremotecache-bench-daemon-")
    server = Server(server_path, [args.delay])
    endpoint = server.proxies[args.delay]
    try:
        local = bench_local(tmp, binary, args.runs, args.handshake_runs)
        colds = [cold_upload(tmp, binary, endpoint, args.delay, run) for run in range(args.cold_runs)]
        fresh = bench_fresh(tmp, binary, endpoint, args.delay, args.warm_lead, args.fresh_runs)
    finally:
        for cache_dir in glob.glob(os.path.join(tmp, "*", "cache")):
            stop_daemons(cache_dir)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = (local_rows(local, args.runs, args.handshake_runs) + cold_rows(colds, args.delay)
            + fresh_rows(fresh, args.delay, args.warm_lead, args.fresh_runs))
    text = bench.markdown_table(
        "goremotecache daemon benchmark", env,
        f"Command: `{command}`. The goremotecache column is the daemon's (`connect`), the "
        "baseline the direct mode (in 3, connect without a warm-up); ratio = goremotecache / "
        f"baseline. Store: the in-process s3s server of the tests on loopback, {args.delay} ms "
        "added to each round trip by a TCP proxy.", rows)
    bench.publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    bench.run(main, "bench_daemon.py")
