#!/usr/bin/env python3
"""Side by side: goremotecache against the other GOCACHEPROG tools, on one S3 store.

One run, one machine, one store on loopback (MinIO, installed from the Go module proxy by
bench/stores.py), the same latency-adding TCP proxy in front of it at each delay:

- tools: Go's own GOCACHE (cold, and warm: the floor every ratio is taken against);
  goremotecache over S3 and over `goremotecache serve` (storing on its own disk), each with and
  without prefetch; the peers of bench/peers.py (go-cache-plugin from the module proxy;
  cacheprog and gobuildcache, which the proxy refuses, built from the checkouts given with
  --cacheprog-src / --gobuildcache-src, their commits recorded; without them they are
  reported as not measured); bazel-remote v2.6.1 (the reference cache server, on its own
  disk like `serve`) through bench/bazelprog, a GOCACHEPROG client for its HTTP /ac/ and /cas/;
- workloads: `go build std`, and `go test` of golang.org/x/tools (bench/workload.py);
- scenarios: cold (empty store prefix, empty local directory; until the go command exits, so
  every tool's close wait for its uploads is included), warm remote (a fresh local directory
  on the warm prefix), warm local (the cold run's local directory again);
- figures: the go command's wall time and its ratio to Go's warm GOCACHE; the time the
  GOCACHEPROG process went on after the go command exited ("+N s after": goremotecache writing
  a prefetch pack once the go command has its last answer; the next measurement starts after
  it); requests the store served (MinIO's metrics; the server's for `serve`), and bytes moved
  through the proxy, both until the GOCACHEPROG exited; the CPU seconds the GOCACHEPROG and
  the store (MinIO, `serve`, bazel-remote: on the same cores as the build here) used in the
  run; its peak resident memory (bench/peakrss, which unlike GNU time does not hold the go
  command's pipes open).

Warm-remote runs go in the order of the delays given, so with prefetch the later delays use a
manifest refined by the earlier warm runs, as a CI job's steady state does.

    python3 bench/compare.py                           # both workloads, 0/10/30 ms (~45 min)
    python3 bench/compare.py --workloads std --delays 0,30
    python3 bench/compare.py --cacheprog-src ../cacheprog --gobuildcache-src ../gobuildcache \
        --groups cacheprog,gobuildcache,bazel-remote --workloads std --delays 0

MinIO is started only when a selected group uses S3, bazel-remote only for its group.

Progress goes to stderr; Markdown to stdout and --markdown; all figures to --json; a plot
to --plot (matplotlib, installed into target/bench-venv on first use).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
import stores  # noqa: E402
import workload  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "compare-token-0123456789abcdef"
PLOT_VENV = os.path.join(REPO_ROOT, "target", "bench-venv")
MATPLOTLIB = "matplotlib==3.9.2"

STORE_NICE = 10          # niceness of MinIO and of goremotecache serve
TARGET_PREFETCH = 0.25   # warm remote at the largest delay: with / without prefetch
TARGET_VS_PEER = 3.0     # ... and the fastest peer / goremotecache
TARGET_COLD = {10: 1.05, 30: 1.10}  # cold with uploads, close wait included / Go's cold, by delay
TARGET_FRESH = {"serve": 2.0, "S3": 3.0}  # fresh machine at the largest delay / Go's warm GOCACHE
TARGET_FRESH_REQUESTS = 50  # store requests of a fresh machine's build over S3
TARGET_VS_PEER_ALL = 1.0  # at every delay and scenario: fastest peer / goremotecache >= this


class BenchError(Exception):
    pass


def progress(message):
    print(message, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="std,test", help="std,test (default both)")
    p.add_argument("--delays", default="0,10,30", help="added round trips in ms (default 0,10,30)")
    p.add_argument("--cold-delays", default=None,
                   help="delays at which to run the cold scenario (default: all for std, the "
                        "first for test)")
    p.add_argument("--groups", default=None,
                   help="only these tool groups, comma-separated (grc-s3, grc-serve, bazel-remote, "
                        "or a peer's name: go-cache-plugin, cacheprog, gobuildcache)")
    p.add_argument("--bin", help="the goremotecache binary (default: cargo build --release)")
    peers.add_source_options(p)
    p.add_argument("--markdown", help="also write the Markdown to this file")
    p.add_argument("--json", help="write every figure as JSON to this file")
    p.add_argument("--plot", help="write a PNG plot to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    known = {"grc-s3", "grc-serve", "bazel-remote", *peers.PEERS}
    if args.groups and not set(args.groups.split(",")) <= known:
        p.error(f"--groups: unknown {', '.join(sorted(set(args.groups.split(',')) - known))} "
                f"(known: {', '.join(sorted(known))})")
    return args


def build_binary():
    progress("cargo build --release ...")
    if subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT).returncode != 0:
        raise BenchError("cargo build --release failed")
    return os.path.join(REPO_ROOT, "target", "release", "goremotecache")


class Serve:
    """`goremotecache serve` on its own storage directory."""

    def __init__(self, binary, tmp):
        self.binary, self.tmp, self.port, self.generation = binary, tmp, 0, 0
        self.start()

    def start(self):
        """Starts on an empty storage directory (on the same port as before, if any)."""
        self.generation += 1
        self.storage = os.path.join(self.tmp, f"serve-storage-{self.generation}")
        self.proc = subprocess.Popen(
            ["nice", "-n", str(STORE_NICE), self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--storage-dir", self.storage],
            env={**os.environ, "GOREMOTECACHE_TOKENS": f"rw:{TOKEN}"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # A storage directory is indexed first (its own line), then the server says where.
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            if "serving " in line:
                self.addr = line.split("://", 1)[1].split()[0]
                break
        else:
            raise BenchError(f"goremotecache serve did not start: {''.join(seen)!r}")
        self.port = int(self.addr.rsplit(":", 1)[1])

    def counts(self):
        """Requests answered so far, by method, and entry bytes sent and received."""
        import urllib.request
        text = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=10).read().decode()
        counts = {"total": 0, "bytes_sent": 0, "bytes_received": 0}
        for line in text.splitlines():
            if line.startswith("goremotecache_requests_total{"):
                method = line.split('method="', 1)[1].split('"', 1)[0]
                n = int(float(line.rsplit(" ", 1)[1]))
                counts[method] = counts.get(method, 0) + n
                counts["total"] += n
            elif line.startswith("goremotecache_sent_bytes_total "):
                counts["bytes_sent"] = int(float(line.split()[1]))
            elif line.startswith("goremotecache_received_bytes_total "):
                counts["bytes_received"] = int(float(line.split()[1]))
        return counts

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def restart_empty(self):
        self.stop()
        self.start()


class BazelRemote:
    """bazel-remote v2.6.1 on its own storage directory, HTTP only, on loopback.

    Fair settings for this use: no authentication, a size limit far above a build's (no
    eviction), --disable_http_ac_validation (bazelprog keeps its own text under /ac/, not a
    Bazel ActionResult), --storage_mode uncompressed (the go command's outputs are stored as
    they are, as `serve` does; zstd would add CPU on both sides for loopback traffic), and
    endpoint metrics on for the request counts."""

    def __init__(self, binary, tmp):
        self.binary, self.tmp, self.port, self.generation = binary, tmp, stores.free_port(), 0
        self.start()

    def start(self):
        self.generation += 1
        storage = os.path.join(self.tmp, f"bazel-remote-storage-{self.generation}")
        self.log = open(os.path.join(self.tmp, f"bazel-remote-{self.generation}.log"), "w")
        self.proc = subprocess.Popen(
            ["nice", "-n", str(STORE_NICE), self.binary, "--dir", storage, "--max_size", "20",
             "--storage_mode", "uncompressed", "--http_address", f"127.0.0.1:{self.port}",
             "--grpc_address", "none", "--disable_http_ac_validation", "--enable_endpoint_metrics"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        import urllib.request
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.log.flush()
                    with open(self.log.name) as f:
                        tail = f.read()[-2000:]
                    raise BenchError(f"bazel-remote did not start:\n{tail}")
                time.sleep(0.1)

    def counts(self):
        """Requests answered so far, by method (the HTTP middleware's counts, cache handlers only)."""
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        counts = {"total": 0}
        for line in text.splitlines():
            if line.startswith("http_request_duration_seconds_count{"):
                handler = line.split('handler="', 1)[1].split('"', 1)[0]
                if handler in ("GET", "PUT", "HEAD"):
                    n = int(float(line.rsplit(" ", 1)[1]))
                    counts[handler] = counts.get(handler, 0) + n
                    counts["total"] += n
        return counts

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def restart_empty(self):
        self.stop()
        self.start()


def diff(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}


class Tool:
    """One GOCACHEPROG configuration. `store` is "s3" or "serve"; `group` names the tools that
    share a store prefix (a tool with and without prefetch reads the same entries)."""

    def __init__(self, name, group, store, make):
        self.name, self.group, self.store, self.make = name, group, store, make


def goremotecache_tools(binary):
    def grc(store, prefetch):
        def make(endpoint, prefix, local_dir, stats_file):
            args = [binary, "--cache-dir", os.path.join(local_dir, "cache"),
                    "--lock-dir", os.path.join(local_dir, "locks"), "--stats-file", stats_file]
            if store == "s3":
                args += ["--s3-bucket", "gocache", "--s3-prefix", prefix, "--s3-endpoint", endpoint,
                         "--s3-region", stores.REGION, "--s3-force-path-style"]
                env = {"AWS_ACCESS_KEY_ID": stores.ACCESS_KEY,
                       "AWS_SECRET_ACCESS_KEY": stores.SECRET_KEY,
                       "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
            else:
                # One server, one storage: prefixes are kept apart by the prefetch key only,
                # and entries are content-keyed, so groups on the server share nothing else.
                args += ["--http-url", endpoint, "--http-token", TOKEN]
                env = {}
            if not prefetch:
                args.append("--prefetch=off")
            return shlex.join(args), env
        return make

    return [
        Tool("goremotecache S3", "grc-s3", "s3", grc("s3", True)),
        Tool("goremotecache S3, no prefetch", "grc-s3", "s3", grc("s3", False)),
        Tool("goremotecache serve", "grc-serve", "serve", grc("serve", True)),
        Tool("goremotecache serve, no prefetch", "grc-serve", "serve", grc("serve", False)),
    ]


PEER_GOBIN = os.path.join(REPO_ROOT, "target", "peers", "bin")


def peer_tools(sources, wanted):
    """The peers among `wanted` (group names), with {name: version} and {name: why missing}."""
    tools, versions, missing = [], {}, {}
    for name in peers.PEERS:
        if name not in wanted:
            continue
        if name != "go-cache-plugin" and not sources.get(name):
            missing[name] = (f"the Go module proxy refuses it; give --{name}-src DIR, a checkout of "
                             f"{peers.PEERS[name]['homepage']}")
            progress(f"peer {name}: not measured: {missing[name]}")
            continue
        try:
            path = peers.install(PEER_GOBIN, [name], sources)[name]
            versions[name] = peers.version(name, path, sources)
        except peers.PeerError as err:
            text = " ".join(str(err).split())
            hint = next((w for w in ("403 Forbidden", "not available", "404 Not Found") if w in text), None)
            missing[name] = f"the Go module proxy answers {hint}" if hint else text[:200]
            progress(f"peer {name}: not available: {missing[name]}")
            continue

        def make(endpoint, prefix, local_dir, stats_file, name=name, path=path):
            return peers.command(name, path, endpoint=endpoint, bucket="gocache", prefix=prefix,
                                 region=stores.REGION, access_key=stores.ACCESS_KEY,
                                 secret_key=stores.SECRET_KEY, local_dir=os.path.join(local_dir, "cache"))
        label = versions[name].removeprefix("commit ")[:12] if sources.get(name) else versions[name]
        tools.append(Tool(f"{name} {label}", name, "s3", make))
    return tools, versions, missing


def bazel_remote_tools():
    """bazel-remote through bench/bazelprog: ([Tool], bazel-remote's path, its version)."""
    server = peers.install_bazel_remote(PEER_GOBIN)
    prog = peers.build_bench_program(PEER_GOBIN, "bazelprog")

    def make(endpoint, prefix, local_dir, stats_file):
        # bazel-remote has no prefixes: each cold run starts it on an empty directory instead.
        return shlex.join([prog, "-dir", os.path.join(local_dir, "cache"), "-url", endpoint]), {}
    version = peers.BAZEL_REMOTE["version"]
    return [Tool(f"bazel-remote {version} (bazelprog)", "bazel-remote", "bazel-remote", make)], server, version


PEAKRSS = None  # bench/peakrss, built in main()


def peak_rss_wrapped(prog, rss_file):
    """GOCACHEPROG under bench/peakrss, which writes the tool's peak RSS (KiB) to rss_file when
    it exits, and (unlike GNU time) does not hold the go command's pipes open meanwhile."""
    return f"{shlex.quote(PEAKRSS)} -o {shlex.quote(rss_file)} {prog}"


def wait_for_exit(rss_file, limit=300):
    """Seconds until the GOCACHEPROG under bench/peakrss exits (which writes `rss_file` then): the
    work it does after the go command has exited. Each measurement waits for it, so that the
    next one neither overlaps it nor misses what it stored."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if read_rss(rss_file) is not None:
            return time.perf_counter() - start
        time.sleep(0.02)
    raise BenchError(f"the GOCACHEPROG did not exit within {limit} s of the go command")


def read_rss(rss_file):
    """The peak RSS in bytes that bench/peakrss wrote (its first line, KiB), if it has."""
    try:
        with open(rss_file) as f:
            first = f.readline().strip()
        return int(first) * 1024 if first.isdigit() else None
    except OSError:
        return None


def read_cpu(rss_file):
    """The tool's CPU seconds (user + system) from bench/peakrss's `cpu USER SYSTEM` line."""
    try:
        with open(rss_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "cpu":
                    return float(parts[1]) + float(parts[2])
    except (OSError, ValueError):
        pass
    return None


def process_cpu(proc):
    """CPU seconds (user + system) that a running process has used so far, or None."""
    if proc is None:
        return None
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Workload:
    def __init__(self, name, argv, cwd, env_fn):
        self.name, self.argv, self.cwd, self.env_fn = name, argv, cwd, env_fn

    def run(self, gocache, gocacheprog=None, extra_env=None, label=""):
        env = self.env_fn(gocache, gocacheprog)
        env.update(extra_env or {})
        # The go command's stderr goes to a file, not a pipe: the GOCACHEPROG inherits it, and
        # reading a pipe to its end would also wait for work a tool does after the go command
        # has its last answer and has exited (goremotecache's prefetch pack).
        with tempfile.TemporaryFile() as stderr:
            start = time.perf_counter()
            result = subprocess.run(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True)
            took = time.perf_counter() - start
            if result.returncode != 0:
                stderr.seek(0)
                text = stderr.read().decode(errors="replace")
                raise BenchError(f"{' '.join(self.argv)} ({label}) failed:\n{result.stdout[-2000:]}\n"
                                 f"{text[-3000:]}")
        return took, result.stdout


def std_workload(tmp):
    cwd = os.path.join(tmp, "std")  # a fixed directory: part of the automatic prefetch key
    os.makedirs(cwd, exist_ok=True)

    def env_fn(gocache, prog):
        env = dict(os.environ)
        env.pop("GOCACHEPROG", None)
        env.update(GOCACHE=gocache, GOTOOLCHAIN="local", GOFLAGS="")
        if prog:
            env["GOCACHEPROG"] = prog
        return env
    return Workload("go build std", ["go", "build", "std"], cwd, env_fn)


def test_workload(tmp):
    progress(f"preparing {workload.MODULE}@{workload.VERSION} ...")
    module = workload.prepare_module(os.path.join(REPO_ROOT, "target", "bench-workload"))
    return Workload(f"go test {workload.MODULE}@{workload.VERSION}", workload.go_test_argv(module),
                    module, workload.go_test_env)


class Bench:
    def __init__(self, args, binary, tmp, servers, store=None):
        self.args, self.binary, self.tmp, self.servers = args, binary, tmp, servers
        self.store = store  # MinIO, whose CPU the S3 tools' rows report
        self.delays = [int(d) for d in args.delays.split(",")]
        self.results = []   # dicts
        self.runs = 0

    def fresh(self, tag):
        self.runs += 1
        path = os.path.join(self.tmp, "runs", f"{self.runs:03d}-{tag}")
        os.makedirs(path)
        return path

    def measure(self, wl, tool, scenario, delay, endpoint, prefix, local_dir, counter, proxy,
                record=True):
        stats_file = os.path.join(local_dir, f"stats-{self.runs}.json")
        rss_file = os.path.join(self.tmp, "runs", f"rss-{self.runs}-{scenario}")
        prog, env = tool.make(endpoint, prefix, local_dir, stats_file)
        before, moved_before = counter(), proxy.bytes_total() if proxy else 0
        store_proc = (self.store.proc if self.store else None) if tool.store == "s3" else \
            getattr(self.servers.get(tool.store), "proc", None)
        store_cpu_before = process_cpu(store_proc)
        gocache = os.path.join(local_dir, "gocache")
        os.makedirs(gocache, exist_ok=True)
        took, _ = wl.run(gocache, peak_rss_wrapped(prog, rss_file), env,
                         label=f"{tool.name}, {scenario}, {delay} ms")
        after = wait_for_exit(rss_file)
        store_cpu = process_cpu(store_proc)
        if store_cpu is not None and store_cpu_before is not None:
            store_cpu -= store_cpu_before
        requests = diff(counter(), before)
        moved = (proxy.bytes_total() - moved_before) if proxy else None
        stats = None
        if os.path.exists(stats_file):
            with open(stats_file) as f:
                stats = json.load(f)
        row = {"workload": wl.name, "tool": tool.name, "scenario": scenario, "delay_ms": delay,
               "seconds": took, "after_exit": after, "requests": requests.get("total"), "requests_by_kind": requests,
               "bytes_moved": moved, "peak_rss": read_rss(rss_file), "tool_cpu": read_cpu(rss_file),
               "store_cpu": store_cpu, "stats": stats}
        if record:
            self.results.append(row)
        progress(f"  {wl.name} | {tool.name} | {scenario} | {delay} ms: {took:.2f} s "
                 f"(+{after:.2f} s after the go command exited), "
                 f"{row['requests']} requests, {moved and moved / 2**20:.1f} MiB moved, "
                 f"rss {row['peak_rss'] and row['peak_rss'] / 2**20:.1f} MiB")
        return row

    def go_floor(self, wl):
        gocache = os.path.join(self.fresh("go"), "gocache")
        cold, _ = wl.run(gocache, label="Go cold")
        warm = sorted(wl.run(gocache, label="Go warm")[0] for _ in range(3))[1]
        for scenario, took in (("cold", cold), ("warm local", warm)):
            self.results.append({"workload": wl.name, "tool": "Go GOCACHE", "scenario": scenario,
                                 "delay_ms": 0, "seconds": took})
        progress(f"  {wl.name} | Go GOCACHE: cold {cold:.2f} s, warm {warm:.2f} s")

    def run_workload(self, wl, tools, endpoints, cold_delays):
        self.go_floor(wl)
        groups = {}
        for tool in tools:
            groups.setdefault(tool.group, []).append(tool)
        slug = "std" if "std" in wl.name else "test"
        for group, members in groups.items():
            first = members[0]
            prefix = None
            colds = []
            for delay in cold_delays:
                prefix = f"{slug}-{group}-{delay}"
                if first.store in self.servers:
                    self.servers[first.store].restart_empty()  # no prefixes: empty it instead
                endpoint, counter, proxy = endpoints[(first.store, delay)]
                local = self.fresh(f"{group}-cold-{delay}")
                self.measure(wl, first, "cold", delay, endpoint, prefix, local, counter, proxy)
                colds.append((delay, local))
            for delay in self.delays:
                for tool in members:
                    endpoint, counter, proxy = endpoints[(tool.store, delay)]
                    local = self.fresh(f"{group}-warm-{delay}")
                    self.measure(wl, tool, "warm remote", delay, endpoint, prefix, local, counter,
                                 proxy)
            # Warm local last, when the store has settled after the cold run's uploads: the
            # cold run's directory again, the median of three.
            for delay, local in colds:
                endpoint, counter, proxy = endpoints[(first.store, delay)]
                rows = [self.measure(wl, first, "warm local", delay, endpoint, prefix, local,
                                     counter, proxy, record=False) for _ in range(3)]
                rows.sort(key=lambda r: r["seconds"])
                self.results.append(rows[1])


def markdown(bench, env_line, missing, checks, versions=None):
    out = ["# Side by side: goremotecache and the other GOCACHEPROG tools", "",
           env_line, ""]
    if versions:
        out.append("Versions: " + "; ".join(f"{name} {v}" for name, v in versions.items()) + ".")
        out.append("")
    if missing:
        out.append("Not measured (could not be installed here): " + "; ".join(
            f"{name} ({why})" for name, why in missing.items()) + ".")
        out.append("")
    by_wl = {}
    for r in bench.results:
        by_wl.setdefault(r["workload"], []).append(r)
    for wl, rows in by_wl.items():
        floor = next(r["seconds"] for r in rows if r["tool"] == "Go GOCACHE" and r["scenario"] == "warm local")
        go_cold = next(r["seconds"] for r in rows if r["tool"] == "Go GOCACHE" and r["scenario"] == "cold")
        out += [f"## {wl}", "",
                f"Go's own GOCACHE: cold {go_cold:.2f} s, warm {floor:.2f} s (the floor: ratios "
                f"below are against it).", ""]
        for scenario in ("warm remote", "cold", "warm local"):
            sub = [r for r in rows if r["scenario"] == scenario and r["tool"] != "Go GOCACHE"]
            if not sub:
                continue
            delays = sorted({r["delay_ms"] for r in sub})
            out.append(f"### {scenario}")
            out.append("")
            head = "| tool | " + " | ".join(f"{d} ms: time (x Go warm)" for d in delays) + \
                f" | requests at {delays[-1]} ms | MiB moved at {delays[-1]} ms | CPU s at {delays[-1]} ms: " \
                f"tool + store | peak RSS |"
            out += [head, "|---" * (len(delays) + 5) + "|"]
            tools = list(dict.fromkeys(r["tool"] for r in sub))
            for tool in tools:
                cells = []
                for d in delays:
                    r = next((r for r in sub if r["tool"] == tool and r["delay_ms"] == d), None)
                    cells.append("-" if r is None else f"{r['seconds']:.2f} s ({r['seconds'] / floor:.1f}x)"
                                 + after_exit(r))
                last = next((r for r in sub if r["tool"] == tool and r["delay_ms"] == delays[-1]), {})
                moved = last.get("bytes_moved")
                rss = max((r["peak_rss"] or 0 for r in sub if r["tool"] == tool), default=0)
                out.append(f"| {tool} | " + " | ".join(cells) +
                           f" | {last.get('requests', '-')} | {'-' if moved is None else f'{moved / 2**20:.1f}'}"
                           f" | {cpu_cell(last)} | {rss / 2**20:.1f} MiB |")
            out.append("")
    out += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for label, measured, ok in checks:
        out.append(f"| {label} | {measured} | {'yes' if ok else 'NO'} |")
    out.append("")
    return "\n".join(out)


def cpu_cell(row):
    """The GOCACHEPROG's CPU seconds and the store's (MinIO, serve or bazel-remote) in a run."""
    tool, store = row.get("tool_cpu"), row.get("store_cpu")
    if tool is None:
        return "-"
    return f"{tool:.1f} + {store:.1f}" if store is not None else f"{tool:.1f}"


def after_exit(row):
    """A cell's note of the time the tool worked on after the go command exited, if any."""
    after = row.get("after_exit") or 0
    return f" +{after:.1f} s after" if after >= 0.1 else ""


def find(results, wl, tool_prefix, scenario, delay):
    rows = [r for r in results if r["workload"] == wl and r["tool"].startswith(tool_prefix)
            and r["scenario"] == scenario and r["delay_ms"] == delay]
    return rows[0]["seconds"] if rows else None


def targets(bench, peer_names):
    checks = []
    top = max(bench.delays)
    for wl in dict.fromkeys(r["workload"] for r in bench.results):
        for store in ("S3", "serve"):
            on = find(bench.results, wl, f"goremotecache {store}", "warm remote", top)
            off = find(bench.results, wl, f"goremotecache {store}, no prefetch", "warm remote", top)
            if on and off:
                checks.append((f"{wl}, warm remote at {top} ms, {store}: with / without prefetch <= {TARGET_PREFETCH}",
                               f"{on / off:.3f} ({on:.2f} s / {off:.2f} s)", on / off <= TARGET_PREFETCH))
        grc = find(bench.results, wl, "goremotecache S3", "warm remote", top)
        peer_times = [t for t in (find(bench.results, wl, p, "warm remote", top) for p in peer_names) if t]
        if grc and peer_times:
            best = min(peer_times)
            checks.append((f"{wl}, warm remote at {top} ms: fastest peer / goremotecache S3 >= {TARGET_VS_PEER}",
                           f"{best / grc:.1f}x ({best:.2f} s / {grc:.2f} s)", best / grc >= TARGET_VS_PEER))
        low = min(bench.delays)
        for scenario in ("cold", "warm remote", "warm local"):
            grc = find(bench.results, wl, "goremotecache S3", scenario, low)
            peer_times = [t for t in (find(bench.results, wl, p, scenario, low) for p in peer_names) if t]
            if grc and peer_times:
                best = min(peer_times)
                checks.append((f"{wl}, {scenario} at {low} ms: goremotecache S3 no slower than the fastest peer",
                               f"{grc:.2f} s vs {best:.2f} s", grc <= best))
        for scenario in ("cold", "warm remote", "warm local"):
            for delay in bench.delays:
                grc = find(bench.results, wl, "goremotecache serve", scenario, delay)
                bazel = find(bench.results, wl, "bazel-remote", scenario, delay)
                if grc and bazel:
                    checks.append((f"{wl}, {scenario} at {delay} ms: goremotecache serve no slower than "
                                   f"bazel-remote (bazelprog)", f"{grc:.2f} s vs {bazel:.2f} s", grc <= bazel))
        go_cold = find(bench.results, wl, "Go GOCACHE", "cold", 0)
        for r in bench.results:
            if (r["workload"] == wl and r["scenario"] == "cold" and r["tool"] in ("goremotecache S3", "goremotecache serve")
                    and r["delay_ms"] in TARGET_COLD and go_cold):
                ratio = r["seconds"] / go_cold
                bound = TARGET_COLD[r["delay_ms"]]
                checks.append((f"{wl}, cold at {r['delay_ms']} ms, {r['tool']} (close wait included) / Go cold <= {bound}",
                               f"{ratio:.2f} ({r['seconds']:.2f} s / {go_cold:.2f} s)", ratio <= bound))
        go_warm = find(bench.results, wl, "Go GOCACHE", "warm local", 0)
        for store, bound in TARGET_FRESH.items():
            r = [x for x in bench.results if x["workload"] == wl and x["tool"] == f"goremotecache {store}"
                 and x["scenario"] == "warm remote" and x["delay_ms"] == top]
            if r and go_warm:
                ratio = r[0]["seconds"] / go_warm
                checks.append((f"{wl}, fresh machine at {top} ms, {store} / Go warm GOCACHE <= {bound}",
                               f"{ratio:.2f} ({r[0]['seconds']:.2f} s / {go_warm:.2f} s)", ratio <= bound))
                if store == "S3" and r[0].get("requests") is not None:
                    checks.append((f"{wl}, fresh machine at {top} ms, S3: store requests < {TARGET_FRESH_REQUESTS}",
                                   f"{r[0]['requests']}", r[0]["requests"] < TARGET_FRESH_REQUESTS))
        for scenario in ("cold", "warm remote", "warm local"):
            for delay in bench.delays:
                grc = [t for t in (find(bench.results, wl, f"goremotecache {s}", scenario, delay) for s in ("S3", "serve")) if t]
                peer_times = [t for t in (find(bench.results, wl, p, scenario, delay) for p in peer_names) if t]
                if grc and peer_times:
                    best, ours = min(peer_times), min(grc)
                    checks.append((f"{wl}, {scenario} at {delay} ms: fastest peer / fastest goremotecache >= {TARGET_VS_PEER_ALL}",
                                   f"{best / ours:.2f}x ({best:.2f} s / {ours:.2f} s)", best / ours >= TARGET_VS_PEER_ALL))
    return checks


def plot(bench, path):
    python = os.path.join(PLOT_VENV, "bin", "python")
    if not os.path.exists(python):
        progress(f"installing {MATPLOTLIB} into {PLOT_VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", PLOT_VENV], check=True)
        subprocess.run([os.path.join(PLOT_VENV, "bin", "pip"), "install", "-q", MATPLOTLIB], check=True)
    data = json.dumps(bench.results)
    script = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = json.loads(sys.stdin.read())
wls = list(dict.fromkeys(r["workload"] for r in rows))
fig, axes = plt.subplots(1, len(wls), figsize=(6.5 * len(wls), 4.6), squeeze=False)
for ax, wl in zip(axes[0], wls):
    sub = [r for r in rows if r["workload"] == wl]
    floor = next(r["seconds"] for r in sub if r["tool"] == "Go GOCACHE" and r["scenario"] == "warm local")
    for tool in dict.fromkeys(r["tool"] for r in sub if r["scenario"] == "warm remote"):
        pts = sorted((r["delay_ms"], r["seconds"] / floor) for r in sub
                     if r["tool"] == tool and r["scenario"] == "warm remote")
        style = "-" if tool.startswith("goremotecache") else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=tool)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_title(f"{wl}: warm remote, fresh local directory", fontsize=10)
    ax.set_xlabel("added round trip to the store (ms)")
    ax.set_ylabel("wall time / Go's warm GOCACHE (log)")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=110)
'''
    subprocess.run([python, "-c", script, path], input=data, text=True, check=True)
    progress(f"plot written to {path}")


def main():
    args = parse_args()
    wanted = set(args.groups.split(",")) if args.groups else {"grc-s3", "grc-serve", "bazel-remote", *peers.PEERS}
    sources = peers.source_options(args)
    binary = os.path.abspath(args.bin) if args.bin else build_binary()
    if not os.access(binary, os.X_OK):
        raise BenchError(f"--bin {binary}: not an executable")
    global PEAKRSS
    PEAKRSS = peers.build_bench_program(PEER_GOBIN, "peakrss")
    tmp = tempfile.mkdtemp(prefix="grc-compare-")
    tools = [t for t in goremotecache_tools(binary) if t.group in wanted]
    peer_list, versions, missing = peer_tools(sources, wanted)
    tools += peer_list
    bazel_remote = None
    if "bazel-remote" in wanted:
        bazel_tools, bazel_remote, versions["bazel-remote"] = bazel_remote_tools()
        tools += bazel_tools
    kinds = {t.store for t in tools}
    # The stores and the servers stand in for machines of their own: on this one they run at a
    # lower priority than the build, for every tool alike. Only those a selected tool uses start.
    store = stores.MinioStore(nice=STORE_NICE) if "s3" in kinds else None
    servers, proxies, counters = {}, [], {}
    try:
        if store:
            progress("installing MinIO if needed ...")
            store.install()
            store.start()
            counters["s3"] = (store.port, store.request_counts)
        if "serve" in kinds:
            servers["serve"] = Serve(binary, tmp)
            counters["serve"] = (servers["serve"].port, servers["serve"].counts)
        if "bazel-remote" in kinds:
            servers["bazel-remote"] = BazelRemote(bazel_remote, tmp)
            counters["bazel-remote"] = (servers["bazel-remote"].port, servers["bazel-remote"].counts)
        bench = Bench(args, binary, tmp, servers, store)
        endpoints = {}
        for delay in bench.delays:
            for kind, (port, counter) in counters.items():
                proxy = stores.LatencyProxy("127.0.0.1", port, delay)
                proxies.append(proxy)
                endpoints[(kind, delay)] = (proxy.endpoint, counter, proxy)
        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        for name in names:
            wl = std_workload(tmp) if name == "std" else test_workload(tmp)
            if args.cold_delays:
                cold = [int(d) for d in args.cold_delays.split(",")]
            else:
                cold = bench.delays if name == "std" else bench.delays[:1]
            progress(f"== {wl.name}")
            bench.run_workload(wl, tools, endpoints, cold)
        go_version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        env_line = (f"Machine: {os.cpu_count()} cores; {go_version}; store: MinIO "
                    f"{stores.MINIO_VERSION} on loopback behind a TCP proxy adding the delay to every "
                    f"round trip (MinIO, goremotecache serve and bazel-remote at nice {STORE_NICE}, "
                    f"standing in for machines of their own); goremotecache `{git_commit()}`.")
        checks = targets(bench, [t.name for t in peer_list])
        text = markdown(bench, env_line, missing, checks, versions)
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": bench.results, "versions": versions, "missing": missing,
                           "targets": [list(c) for c in checks]}, f, indent=1)
        if args.plot:
            plot(bench, args.plot)
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in servers.values():
            server.stop()
        if store:
            store.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def git_commit():
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    try:
        main()
    except (BenchError, stores.StoreError, peers.PeerError) as err:
        print(f"compare: {err}", file=sys.stderr)
        sys.exit(1)
