#!/usr/bin/env python3
"""A fleet of simulated CI machines on a distributed store: does goremotecache scale past one machine?

One run, one machine, everything on loopback:

- the store: a 4-node MinIO cluster in distributed mode (one drive per node, erasure coded
  over the 4 drives, so any one node may die and reads and writes still reach quorum),
  installed from the Go module proxy by bench/stores.py, behind a round-robin TCP balancer
  that skips a node that refuses connections;
- `goremotecache serve` as two replicas storing in that cluster (`serve --s3-*`, its own
  prefix), behind a second round-robin balancer;
- the workload: a generated module of PACKAGES small packages plus a main package that imports
  a slice of std (encoding/json, net/url, compress/gzip, crypto/sha256, text/template), built
  with `go build -trimpath` (so a pull request's checkout elsewhere has the same action IDs);
- the machines: N = 1, 2, 4, 8 fresh CI machines (their own cache directory and GOCACHE each)
  building at once, in two modes: goremotecache straight to S3, and through `serve`. In a
  round, machine i is, by i mod 4: a main-branch build (namespace `main`, build key `build`);
  another of the same; a pull request (namespace `pr-<round>-<i>` reading `main`, one leaf
  package changed); a main-branch build of another job (build key `build-other`, the same
  code). Before the rounds, one cold main-branch build per mode fills the store.
- the faults: a last round of N = 8 per mode during which one MinIO node is killed (SIGKILL)
  and, through `serve`, one replica too. Every build of every round must succeed, and its
  binary must be byte for byte the one a build with Go's own cache makes (the build is
  reproducible with -trimpath) and print the same line when run.

Figures per mode and N: hit rate (the go command's gets answered from the cache, over its
gets; also apart for main-branch and pull-request machines), median and p90 wall time of
`go build`, CPU per build (the machine's: the go command with its compilers, and its
goremotecache, read from /proc; the stores': the MinIO nodes and serve replicas), and
requests per build: at the store (the sum of MinIO's per-node request metrics over the
round, over N; through `serve` both serve's requests and what serve asked of MinIO) and the
bytes they moved. A round ends when every machine's goremotecache has exited (the pack and
the stats file come after the go command), so its counts are its own.

    python3 bench/fleet.py --bin target/release/goremotecache            # about 10 minutes
    python3 bench/fleet.py --bin BIN --sizes 1,2 --no-kill               # a smoke test
    python3 bench/fleet.py --bin BIN --markdown /tmp/fleet.md --json /tmp/fleet.json

Progress goes to stderr; Markdown to stdout and --markdown; every figure to --json.
"""

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_serve  # noqa: E402
import compare  # noqa: E402
import stores  # noqa: E402

TOKEN = "fleet-token-0123456789abcdef"
NODES = 4
PACKAGES = 24
KILL_AFTER = 2.0  # seconds into the fault round


class FleetError(bench.BenchError):
    pass


def progress(message):
    print(message, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", help="the goremotecache binary (default: cargo build --release)")
    p.add_argument("--sizes", default="1,2,4,8", help="machines building at once (default 1,2,4,8)")
    p.add_argument("--repeat", type=int, default=1, help="rounds per size and mode (default 1)")
    p.add_argument("--modes", default="s3,serve", help="s3,serve (default both)")
    p.add_argument("--no-kill", action="store_true", help="skip the round with a node and a replica killed")
    p.add_argument("--markdown", help="also write the Markdown to this file")
    p.add_argument("--json", help="write every figure as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p.parse_args()


# --- A round-robin TCP balancer --------------------------------------------------------------


class Balancer:
    """A TCP balancer on 127.0.0.1: each connection goes to the next backend in turn; a backend
    that refuses the connection is skipped (as a load balancer's health check would drop it).
    Runs an asyncio loop in a daemon thread."""

    def __init__(self, backends, name):
        self.backends = list(backends)
        self.next = 0
        self.per_backend = [0] * len(self.backends)
        self.refused = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
            started.set()
            self.loop.run_forever()

        threading.Thread(target=run, name=name, daemon=True).start()
        started.wait()
        self.port = self.server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def _handle(self, client_r, client_w):
        server = None
        for _ in range(len(self.backends)):
            i = self.next % len(self.backends)
            self.next += 1
            try:
                server = await asyncio.open_connection(*self.backends[i])
                self.per_backend[i] += 1
                break
            except OSError:
                self.refused += 1
        if server is None:
            client_w.close()
            return
        server_r, server_w = server
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        async def pump(r, w):
            try:
                while True:
                    data = await r.read(256 * 1024)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                w.close()

        try:
            await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        except asyncio.CancelledError:
            pass

    def stop(self):
        async def close():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()
        asyncio.run_coroutine_threadsafe(close(), self.loop)


# --- The store: MinIO in distributed mode ----------------------------------------------------


class MinioCluster:
    """NODES MinIO processes on 127.0.0.1, one drive each, one erasure set over all of them."""

    def __init__(self, tmp, bucket="gocache"):
        self.tmp, self.bucket = tmp, bucket
        self.binary = stores.MinioStore().install()
        self.ports = [stores.free_port() for _ in range(NODES)]
        self.drives = [os.path.join(tmp, f"minio-node{i + 1}", "data") for i in range(NODES)]
        self.procs = [None] * NODES
        self.readers = []  # one stores.MinioStore per node, for its request metrics
        for port in self.ports:
            reader = stores.MinioStore(bucket=bucket)
            reader.port = port
            self.readers.append(reader)
        # A node's counters vanish when it dies: its last reading stands in from then on.
        self.last_counts = [None] * NODES

    def start_node(self, i):
        endpoints = [f"http://127.0.0.1:{p}{d}" for p, d in zip(self.ports, self.drives)]
        os.makedirs(self.drives[i], exist_ok=True)
        home = os.path.dirname(self.drives[i])
        env = dict(os.environ)
        env.update(
            MINIO_ROOT_USER=stores.ACCESS_KEY, MINIO_ROOT_PASSWORD=stores.SECRET_KEY,
            MINIO_REGION=stores.REGION, MINIO_PROMETHEUS_AUTH_TYPE="public",
            MINIO_BROWSER="off", MINIO_UPDATE="off", MINIO_CALLHOME_ENABLE="off",
            # The drives share the root disk: allowed for a test cluster.
            MINIO_CI_CD="1",
            # In a container (/.dockerenv) MinIO waits forever for a loopback host to resolve
            # to another address; this names the node's own endpoint (cmd/endpoint.go).
            _MINIO_SERVER_LOCAL=f"127.0.0.1:{self.ports[i]}",
            HOME=home)
        log = open(os.path.join(home, "minio.log"), "ab")
        self.procs[i] = subprocess.Popen(
            ["nice", "-n", str(compare.STORE_NICE), self.binary, "server", "--quiet",
             "--address", f"127.0.0.1:{self.ports[i]}", *endpoints],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def start(self, timeout=120):
        for i in range(NODES):
            self.start_node(i)
        self.wait_healthy(range(NODES), timeout)
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = stores.s3_request(f"http://127.0.0.1:{self.ports[0]}", "PUT",
                                                f"/{self.bucket}")
            if status in (200, 409):
                break
            if time.monotonic() > deadline:
                raise FleetError(f"CreateBucket on the cluster: HTTP {status}: {body[:200]!r}")
            time.sleep(0.5)
        self.balancer = Balancer([("127.0.0.1", p) for p in self.ports], "minio-balancer")
        self.endpoint = self.balancer.endpoint
        return self

    def wait_healthy(self, nodes, timeout):
        deadline = time.monotonic() + timeout
        for i in nodes:
            while True:
                if self.procs[i].poll() is not None:
                    raise FleetError(f"MinIO node {i + 1} exited; log in {os.path.dirname(self.drives[i])}")
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{self.ports[i]}/minio/health/cluster", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise FleetError(f"MinIO node {i + 1} not healthy after {timeout}s")
                time.sleep(0.3)

    def kill(self, i):
        self.counts()  # keep its last reading
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def restart(self, i, timeout=120):
        self.start_node(i)
        self.wait_healthy([i], timeout)

    def counts(self):
        """Requests and bytes served by all nodes so far (a dead node's last reading), and
        their CPU seconds (`cpu`, a node's own since its start)."""
        total = {"cpu_ms": int(1000 * sum(proc_cpu(p) for p in self.procs))}
        for i, reader in enumerate(self.readers):
            if self.procs[i] is not None and self.procs[i].poll() is None:
                try:
                    self.last_counts[i] = reader.request_counts()
                except (OSError, stores.StoreError):
                    pass
            for k, v in (self.last_counts[i] or {}).items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return total

    def stop(self):
        if getattr(self, "balancer", None):
            self.balancer.stop()
        for p in self.procs:
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


# --- serve replicas --------------------------------------------------------------------------


class Replica:
    """`goremotecache serve` storing in the cluster (through its balancer)."""

    def __init__(self, binary, tmp, name, s3_endpoint):
        self.binary, self.name, self.s3_endpoint = binary, name, s3_endpoint
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.port = stores.free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.last = None
        self.start()

    def start(self):
        env = {**os.environ, **stores.MinioStore().env(), "GOREMOTECACHE_TOKENS": f"rw:{TOKEN}"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["nice", "-n", str(compare.STORE_NICE), self.binary, "serve", "--listen", self.addr,
             "--s3-bucket", "gocache", "--s3-prefix", "fleet-serve", "--s3-endpoint",
             self.s3_endpoint, "--s3-region", stores.REGION, "--s3-force-path-style"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError(f"serve {self.name} exited: {open(self.log_path).read()[-2000:]}")
            with open(self.log_path) as f:
                if "serving " in f.read():
                    return
            time.sleep(0.1)
        raise FleetError(f"serve {self.name} did not start: {open(self.log_path).read()[-2000:]}")

    def counts(self):
        if self.proc.poll() is None:
            try:
                self.last = dict(compare.Serve.counts(self), cpu_ms=int(1000 * proc_cpu(self.proc)))
            except OSError:
                pass
        return self.last or {}

    def kill(self):
        self.counts()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def proc_cpu(proc):
    """CPU seconds (user and system) of a running child so far; 0 once it has exited."""
    if proc is None or proc.poll() is not None:
        return 0.0
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def sum_counts(replicas):
    total = {}
    for r in replicas:
        for k, v in r.counts().items():
            total[k] = total.get(k, 0) + v
    return total


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items()}


# --- The workload ----------------------------------------------------------------------------


def write_module(root, changed=None):
    """A module of PACKAGES generated packages and a main package. `changed`: (package index,
    text) of a pull request's change to one leaf package (its constant)."""
    os.makedirs(os.path.join(root, "cmd", "app"), exist_ok=True)
    with open(os.path.join(root, "go.mod"), "w") as f:
        f.write("module example.com/fleet\n\ngo 1.26\n")
    for i in range(PACKAGES):
        d = os.path.join(root, f"p{i:02d}")
        os.makedirs(d, exist_ok=True)
        parent = (i - 1) // 2 if i else None  # a binary tree: p00 at the root
        label = f"p{i:02d}"
        if changed and changed[0] == i:
            label += "+" + changed[1]
        lines = [f"package p{i:02d}", "", "import ("]
        lines.append('\t"strings"')
        if parent is not None:
            lines.append(f'\tparent "example.com/fleet/p{parent:02d}"')
        lines += [")", "", f"const Label = {json.dumps(label)}", ""]
        # Enough code that compiling it takes a moment: a few dozen functions.
        for k in range(40):
            lines += [f"func F{k}(xs []int) int {{", "\ts := 0",
                      "\tfor j, x := range xs {", f"\t\ts += x*{k + 1} + j%{k + 3}",
                      f"\t\tif s > {1000 * (k + 1)} {{ s -= {k + 7} }}", "\t}", "\treturn s", "}", ""]
        body = "\treturn strings.ToUpper(Label)"
        if parent is not None:
            body += " + \"/\" + parent.Name()"
        lines += ["func Name() string {", body, "}", ""]
        with open(os.path.join(d, f"p{i:02d}.go"), "w") as f:
            f.write("\n".join(lines))
    imports = "\n".join(f'\t"example.com/fleet/p{i:02d}"' for i in range(PACKAGES))
    names = ", ".join(f"p{i:02d}.Name()" for i in range(PACKAGES))
    sums = " + ".join(f"p{i:02d}.F{i % 40}(xs)" for i in range(PACKAGES))
    main = f"""package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"text/template"

{imports}
)

func main() {{
	xs := []int{{3, 1, 4, 1, 5, 9, 2, 6}}
	names := []string{{{names}}}
	js, _ := json.Marshal(names)
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(js)
	w.Close()
	u := url.URL{{Scheme: "https", Host: "example.com", Path: "/fleet"}}
	t := template.Must(template.New("t").Parse("{{{{.}}}}"))
	var out bytes.Buffer
	t.Execute(&out, u.String())
	fmt.Fprintf(os.Stdout, "%x %d %s\\n", sha256.Sum256(js), {sums}, out.String())
}}
"""
    with open(os.path.join(root, "cmd", "app", "main.go"), "w") as f:
        f.write(main)


def go_env(gocache, gocacheprog=None):
    env = bench.go_env(gocache, gocacheprog)
    env["GOPROXY"] = "off"
    return env


class Variant:
    """A checkout: the source, and the reference binary and output of a build with Go's own
    cache."""

    def __init__(self, tmp, name, changed, ref_cache):
        self.name = name
        self.src = os.path.join(tmp, "src", name)
        write_module(self.src, changed)
        out = os.path.join(tmp, "ref", name)
        r = subprocess.run(["go", "build", "-trimpath", "-o", out, "./cmd/app"], cwd=self.src,
                           env=go_env(ref_cache), capture_output=True, text=True)
        if r.returncode != 0:
            raise FleetError(f"reference build of {name} failed: {r.stderr[-2000:]}")
        self.sha = sha256_file(out)
        self.output = subprocess.run([out], capture_output=True, text=True, check=True).stdout


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- Machines --------------------------------------------------------------------------------


def machine_plan(round_name, n, variants_for_pr):
    """Machine i's role by i mod 4 (see the module's doc)."""
    plan = []
    for i in range(n):
        role = i % 4
        if role in (0, 1):
            plan.append(dict(role="main", key="build", ns="main", read=None, variant="main"))
        elif role == 2:
            plan.append(dict(role="pr", key="build", ns=f"pr-{round_name}-{i}", read="main",
                             variant=variants_for_pr(i)))
        else:
            plan.append(dict(role="main, other job", key="build-other", ns="main", read=None,
                             variant="main"))
    return plan


def run_machine(binary, mode, remote, mdir, spec, variant):
    """One fresh machine's build; returns its figures (raises nothing: failures are recorded)."""
    os.makedirs(os.path.join(mdir, "gocache"), exist_ok=True)
    stats_file = os.path.join(mdir, "stats.json")
    argv = [binary, "--cache-dir", os.path.join(mdir, "cache"), "--lock-dir",
            os.path.join(mdir, "locks"), "--stats-file", stats_file, "--upload-wait", "2m",
            "--prefetch-key", spec["key"], "--namespace", spec["ns"]]
    if spec["read"]:
        argv += ["--read-namespaces", spec["read"]]
    if mode == "s3":
        argv += ["--s3-bucket", "gocache", "--s3-prefix", "fleet-s3", "--s3-endpoint", remote,
                 "--s3-region", stores.REGION, "--s3-force-path-style"]
    else:
        argv += ["--http-url", remote, "--http-token", TOKEN]
    env = go_env(os.path.join(mdir, "gocache"), shlex.join(argv))
    env.update(stores.MinioStore().env())
    out = os.path.join(mdir, "app")
    log_path = os.path.join(mdir, "go-build.log")
    watcher = CpuWatcher(os.path.join(mdir, "cache"))
    began = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["go", "build", "-trimpath", "-o", out, "./cmd/app"],
                                cwd=variant.src, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    # wait4: this build's own CPU time (the go command and the compilers and goremotecache
    # it waited for), apart from the other machines'.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    result = dict(spec, seconds=seconds, cpu_seconds=usage.ru_utime + usage.ru_stime,
                  ok=proc.returncode == 0, correct=False, error=None)
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            result["error"] = f.read()[-1500:]
        return result
    run = subprocess.run([out], capture_output=True, text=True)
    result["correct"] = sha256_file(out) == variant.sha and run.stdout == variant.output
    if not result["correct"]:
        result["error"] = f"output differs: {run.stdout!r} vs {variant.output!r}"
    # goremotecache goes on after the go command has its answers (the pack, the automatic
    # trim) and writes the stats file again at its end: wait for it to exit, so that the
    # round's request counts are its own and the next round finds the pack.
    result["exit_wait_s"] = wait_exit(os.path.join(mdir, "cache"))
    result["grc_cpu_seconds"] = watcher.stop()
    result["cpu_seconds"] += result["grc_cpu_seconds"]
    try:
        with open(stats_file) as f:
            result["stats"] = json.load(f)
    except (OSError, ValueError):
        result["stats"] = None
    return result


def pids_with(needle):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


class CpuWatcher:
    """The CPU time of the goremotecache process of one machine (the go command does not wait
    for it, so the go command's rusage leaves it out): read from /proc every 0.1 s until it
    exits; the last reading stands (up to 0.1 s short)."""

    def __init__(self, marker):
        self.needle = marker.encode()
        self.ticks = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pids = []
        while not self.done.is_set():
            if not pids:  # scan /proc until the process is there, then read only its stat
                pids = pids_with(self.needle)
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    self.ticks[pid] = int(fields[11]) + int(fields[12])
                except (OSError, IndexError, ValueError):
                    pass
            self.done.wait(0.1)

    def stop(self):
        self.done.set()
        self.thread.join()
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")


def wait_exit(marker, timeout=180):
    """Waits until no process has `marker` (a machine's cache directory) in its command line;
    returns how long that took."""
    began = time.monotonic()
    needle = marker.encode()
    while time.monotonic() - began < timeout:
        if not pids_with(needle):
            break
        time.sleep(0.2)
    return time.monotonic() - began


def run_round(binary, mode, remote, tmp, round_name, plan, variants, counters, kill=None):
    """N machines at once; returns the round's figures."""
    before = {name: c() for name, c in counters.items()}
    results = [None] * len(plan)

    def one(i):
        mdir = os.path.join(tmp, "machines", round_name, f"m{i}")
        results[i] = run_machine(binary, mode, remote, mdir, plan[i], variants[plan[i]["variant"]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(plan))]
    began = time.perf_counter()
    for t in threads:
        t.start()
    killed = []
    if kill:
        time.sleep(KILL_AFTER)
        killed = kill()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    after = {name: c() for name, c in counters.items()}
    return dict(mode=mode, round=round_name, n=len(plan), wall=wall, machines=results,
                requests={name: delta(after[name], before[name]) for name in counters},
                killed=killed)


def summarize(rnd):
    ms = rnd["machines"]
    n = rnd["n"]
    times = sorted(m["seconds"] for m in ms)
    gets = sum(m["stats"]["gets"] for m in ms if m.get("stats"))
    hits = sum(m["stats"]["hits"] for m in ms if m.get("stats"))
    remotes = [m["stats"]["remote"] for m in ms if m.get("stats") and m["stats"].get("remote")]

    def rsum(key):
        return sum(r.get(key, 0) for r in remotes)
    pack = sum(((r.get("prefetch") or {}).get("pack") or {}).get("requests", 0) for r in remotes)
    s = dict(
        mode=rnd["mode"], round=rnd["round"], n=n, ok=sum(m["ok"] for m in ms),
        correct=sum(m["correct"] for m in ms), stats_missing=sum(1 for m in ms if not m.get("stats")),
        hit_rate=hits / gets if gets else 0.0, gets_per_build=gets / n,
        median_s=statistics.median(times), p90_s=bench.p90(times), max_s=times[-1],
        cpu_per_build=sum(m.get("cpu_seconds", 0) for m in ms) / n,
        store_requests_per_build=rnd["requests"]["minio"].get("total", 0) / n,
        store_gets_per_build=rnd["requests"]["minio"].get("GetObject", 0) / n,
        store_puts_per_build=rnd["requests"]["minio"].get("PutObject", 0) / n,
        store_bytes_sent_per_build=rnd["requests"]["minio"].get("bytes_sent", 0) / n,
        store_bytes_received_per_build=rnd["requests"]["minio"].get("bytes_received", 0) / n,
        remote_hits_per_build=rsum("hits") / n, remote_misses_per_build=rsum("misses") / n,
        instant_misses_per_build=rsum("instant_misses") / n,
        uploads_per_build=rsum("uploads") / n, bytes_down_per_build=rsum("bytes_down") / n,
        bytes_up_per_build=rsum("bytes_up") / n, pack_requests_per_build=pack / n,
        remote_errors=rsum("errors") + rsum("upload_errors"), killed=rnd["killed"],
        failures=[m["error"] for m in ms if m["error"]])
    by_role = {}
    for m in ms:
        st = m.get("stats") or {}
        r = st.get("remote") or {}
        pf = r.get("prefetch") or {}
        row = by_role.setdefault(m["role"], dict(builds=0, seconds=[], gets=0, hits=0,
                                                 remote_gets=0, prefetched=0, pack_requests=0))
        row["builds"] += 1
        row["seconds"].append(round(m["seconds"], 2))
        row["gets"] += st.get("gets", 0)
        row["hits"] += st.get("hits", 0)
        row["remote_gets"] += r.get("hits", 0) + r.get("misses", 0) + r.get("errors", 0)
        row["prefetched"] += pf.get("fetched", 0)
        row["pack_requests"] += (pf.get("pack") or {}).get("requests", 0)
    s["by_role"] = by_role
    for role, row in by_role.items():
        row["hit_rate"] = row["hits"] / row["gets"] if row["gets"] else 0.0
    s["hit_rate_main"] = by_role.get("main", {}).get("hit_rate", 0.0)
    s["hit_rate_pr"] = by_role.get("pr", {}).get("hit_rate")
    # The wall time two fully shared cores would give if the builds' CPU were all there is
    # (other work on the machine makes the real one longer).
    store_cpu = sum(max(0, rnd["requests"][k].get("cpu_ms", 0)) for k in rnd["requests"]) / 1000
    s["store_cpu_per_build"] = store_cpu / n
    s["cpu_bound_s"] = (s["cpu_per_build"] + s["store_cpu_per_build"]) * n / 2
    if "serve" in rnd["requests"]:
        s["serve_requests_per_build"] = rnd["requests"]["serve"].get("total", 0) / n
        s["serve_bytes_sent_per_build"] = rnd["requests"]["serve"].get("bytes_sent", 0) / n
    return s


# --- Report ----------------------------------------------------------------------------------


def mb(n):
    return f"{n / 1e6:.1f} MB"


def markdown(summaries, seeds, env_line, command):
    lines = [f"### Run: bench/fleet.py — {env_line}", "", f"Command: `{command}`", "",
             "Cold seed builds (one per mode, empty store): " + ", ".join(
                 f"{s['mode']} {s['median_s']:.1f} s, {s['gets_per_build']:.0f} gets, "
                 f"{s['uploads_per_build']:.0f} uploads" for s in seeds), "",
             "| mode | N | builds ok / correct | hit rate (main-branch; PR) | median | p90 | "
             "CPU / build: machine + store; N x both / 2 cores | gets / build | "
             "store requests / build (GET, PUT) | serve requests / build | down / build | "
             "remote hits, misses, instant / build |",
             "|---|---:|---|---|---:|---:|---|---:|---|---:|---:|---|"]
    for s in summaries:
        kill = " (kill)" if s["killed"] else ""
        serve = f"{s['serve_requests_per_build']:.0f}" if "serve_requests_per_build" in s else "—"
        pr = f"{s['hit_rate_pr'] * 100:.1f}%" if s.get("hit_rate_pr") is not None else "—"
        lines.append(
            f"| {s['mode']}{kill} | {s['n']} | {s['ok']} / {s['correct']} of {s['n']} | "
            f"{s['hit_rate'] * 100:.1f}% ({s['hit_rate_main'] * 100:.1f}%; {pr}) | "
            f"{s['median_s']:.1f} s | {s['p90_s']:.1f} s | "
            f"{s['cpu_per_build']:.1f} + {s['store_cpu_per_build']:.1f} s; "
            f"{s['cpu_bound_s']:.1f} s | "
            f"{s['gets_per_build']:.0f} | {s['store_requests_per_build']:.0f} "
            f"({s['store_gets_per_build']:.0f}, {s['store_puts_per_build']:.0f}) | {serve} | "
            f"{mb(s['bytes_down_per_build'])} | {s['remote_hits_per_build']:.0f}, "
            f"{s['remote_misses_per_build']:.0f}, {s['instant_misses_per_build']:.0f} |")
    for s in summaries:
        if s["killed"]:
            lines += ["", f"- {s['mode']}, N={s['n']}: killed {', '.join(s['killed'])} "
                      f"{KILL_AFTER:.0f} s in; {s['ok']} of {s['n']} builds succeeded, "
                      f"{s['correct']} with the reference binary; {s['remote_errors']} remote "
                      f"errors (each a miss or a dropped upload)."]
            for f in s["failures"]:
                lines.append(f"  - failure: {f[:300]!r}")
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    command = shlex.join(["python3", "bench/fleet.py", *sys.argv[1:]])
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = args.modes.split(",")
    if not set(modes) <= {"s3", "serve"} or min(sizes) < 1:
        raise FleetError("--modes takes s3 and serve, --sizes numbers from 1 (see --help)")
    # Without --bin: cargo build --release, into CARGO_TARGET_DIR when it is set.
    binary = os.path.abspath(args.bin) if args.bin else bench_serve.build(False)[0]
    tmp = tempfile.mkdtemp(prefix="goremotecache-fleet-")
    e = bench.environment_summary()
    env_line = f"{e['date']}, {e['go']}, nproc {e['nproc']}, commit {e['commit']}"
    cluster = replicas = serve_lb = None
    summaries, seeds, rounds = [], [], []
    try:
        progress(f"starting a {NODES}-node MinIO cluster ...")
        cluster = MinioCluster(tmp).start()
        progress(f"MinIO cluster up, balancer at {cluster.endpoint}")
        replicas = [Replica(binary, tmp, f"serve-{c}", cluster.endpoint) for c in "ab"]
        serve_lb = Balancer([("127.0.0.1", r.port) for r in replicas], "serve-balancer")
        progress(f"serve replicas at {', '.join(r.addr for r in replicas)}, balancer at {serve_lb.endpoint}")

        # Every checkout the rounds will build, and its reference build with Go's own cache.
        ref_cache = os.path.join(tmp, "ref-gocache")
        names = ["main"]
        plan_rounds = []
        for mode in modes:
            for n in sizes:
                for rep in range(args.repeat):
                    plan_rounds.append((mode, n, f"{mode}-{n}-{rep}", None))
            if not args.no_kill:
                plan_rounds.append((mode, 8, f"{mode}-kill", mode))
        changes = {}
        for mode, n, rname, _ in plan_rounds:
            for i in range(n):
                if i % 4 == 2:
                    name = f"pr-{rname}-{i}"
                    changes[name] = (PACKAGES - 1 - (i // 4) % 8, name)
                    names.append(name)
        progress(f"reference builds with Go's own cache: {len(names)} checkouts ...")
        t0 = time.perf_counter()
        variants = {name: Variant(tmp, name, changes.get(name), ref_cache) for name in names}
        progress(f"  done in {time.perf_counter() - t0:.1f} s")

        remote = {"s3": cluster.endpoint, "serve": serve_lb.endpoint}
        counters = {"s3": {"minio": cluster.counts},
                    "serve": {"minio": cluster.counts, "serve": lambda: sum_counts(replicas)}}
        for mode in modes:
            progress(f"[{mode}] cold seed build (main, empty store) ...")
            rnd = run_round(binary, mode, remote[mode], tmp, f"{mode}-seed",
                            machine_plan("seed", 1, None), variants, counters[mode])
            seeds.append(summarize(rnd))
            rounds.append(rnd)
            progress(f"  {seeds[-1]['median_s']:.1f} s, ok {seeds[-1]['ok']}, correct {seeds[-1]['correct']}")
        for mode, n, rname, kill_mode in plan_rounds:
            plan = machine_plan(rname, n, lambda i, rname=rname: f"pr-{rname}-{i}")
            kill = None
            if kill_mode:
                def kill(mode=mode):
                    done = []
                    cluster.kill(NODES - 1)
                    done.append(f"MinIO node {NODES} of {NODES}")
                    if mode == "serve":
                        replicas[1].kill()
                        done.append("serve replica b of 2")
                    progress(f"  killed {', '.join(done)}")
                    return done
            progress(f"[{mode}] N={n} ({rname}) ...")
            rnd = run_round(binary, mode, remote[mode], tmp, rname, plan, variants,
                            counters[mode], kill)
            rounds.append(rnd)
            s = summarize(rnd)
            summaries.append(s)
            progress(f"  ok {s['ok']}/{n}, correct {s['correct']}/{n}, hit rate "
                     f"{s['hit_rate'] * 100:.1f}%, median {s['median_s']:.1f} s, p90 "
                     f"{s['p90_s']:.1f} s, store requests/build {s['store_requests_per_build']:.0f}")
            if kill_mode:
                progress("  restarting the killed node (and replica) ...")
                cluster.restart(NODES - 1)
                if replicas[1].proc.poll() is not None:
                    replicas[1].start()
        progress(f"balancer connections: MinIO {cluster.balancer.per_backend} (refused "
                 f"{cluster.balancer.refused}), serve {serve_lb.per_backend} (refused {serve_lb.refused})")
    finally:
        if serve_lb:
            serve_lb.stop()
        for r in replicas or []:
            r.stop()
        if cluster:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            progress(f"kept {tmp}")
    text = markdown(summaries, seeds, env_line, command)
    bench.publish(text, args.markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=command, environment=env_line, seeds=seeds,
                           summaries=summaries, rounds=rounds), f, indent=1)
    bad = [s for s in seeds + summaries if s["ok"] != s["n"] or s["correct"] != s["n"]]
    return 1 if bad else 0


if __name__ == "__main__":
    bench.run(main, "fleet.py")
