#!/usr/bin/env python3
"""Opt-in check of `serve --goproxy` against the machine's real upstream (not run by CI).

Starts `goremotecache serve --goproxy` whose upstream is this machine's `go env GOPROXY`
(and whose checksum database is the one `go env GOSUMDB` names, the server's default), then
runs `go mod download -json MODULE@VERSION` through it twice, each time on a fresh GOPATH and
GOMODCACHE (a new machine):

1. the first run fetches every file from the upstream through the proxy;
2. the second must be answered from the proxy's storage: its `.info`, `.mod` and `.zip`
   requests are hits in `goremotecache_goproxy_requests_total` and none is a miss.

The go command keeps the machine's GOSUMDB, so checksums are verified through the proxy's
`/mod/sumdb/<name>/` (unless GOSUMDB is off). It needs the upstream to be reachable. Any
module works; the proxy and database are the machine's, never named here.

Run from the repository root:

    python3 bench/goproxy_real_upstream.py golang.org/x/text@v0.14.0
    python3 bench/goproxy_real_upstream.py --bin target/release/goremotecache MODULE@VERSION

Exits non-zero if a download fails or the second run fetched from the upstream (its
temporary directory, with the server's log, is then left for a look).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import BenchError, progress  # noqa: E402
from stores import free_port  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="MODULE@VERSION to download (golang.org/x/text@v0.14.0)")
    parser.add_argument("--bin", help="the goremotecache binary (default: cargo build --release)")
    return parser.parse_args()


def go_env_value(name):
    value = bench.run_text(["go", "env", name])
    if not value:
        raise BenchError(f"`go env {name}` gave nothing")
    return value


class ProxyServer:
    """`goremotecache serve --goproxy` on a storage directory, with anonymous reads (the go
    command sends credentials over https only)."""

    def __init__(self, binary, tmp, upstream):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "serve.log"), "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--storage-dir", os.path.join(tmp, "storage"), "--listen",
             f"127.0.0.1:{self.port}", "--allow-anonymous-read", "--goproxy",
             "--goproxy-upstream", upstream],
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
        """goremotecache_goproxy_requests_total by (kind, result)."""
        text = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        counts = {}
        for line in text.splitlines():
            if line.startswith("goremotecache_goproxy_requests_total{"):
                labels, value = line.rsplit(" ", 1)
                kind = labels.split('kind="', 1)[1].split('"', 1)[0]
                result = labels.split('result="', 1)[1].split('"', 1)[0]
                counts[(kind, result)] = counts.get((kind, result), 0) + int(float(value))
        return counts

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def download(module, tmp, name, goproxy):
    """`go mod download -json MODULE` on a fresh GOPATH: seconds taken."""
    gopath = os.path.join(tmp, name)
    work = os.path.join(tmp, name + "-work")
    os.makedirs(work)
    env = dict(os.environ)
    for var in ("GOCACHEPROG", "GOFLAGS", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOWORK"):
        env.pop(var, None)
    env.update(GOPATH=gopath, GOMODCACHE=os.path.join(gopath, "pkg", "mod"), GOPROXY=goproxy,
               GOTOOLCHAIN="local", GOFLAGS="-modcacherw", GOWORK="off")
    start = time.monotonic()
    result = subprocess.run(["go", "mod", "download", "-json", module], cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    took = time.monotonic() - start
    if result.returncode != 0:
        raise BenchError(f"{name}: go mod download {module} failed:\n{result.stdout}{result.stderr[-2000:]}")
    item = json.loads(result.stdout)
    if item.get("Error"):
        raise BenchError(f"{name}: {item['Error']}")
    progress(f"{name}: {module} in {took:.2f} s, zip {item.get('Zip')}")
    return took


def delta(after, before):
    return {key: after.get(key, 0) - before.get(key, 0)
            for key in after if after.get(key, 0) != before.get(key, 0)}


def main():
    args = parse_args()
    if "@" not in args.module:
        raise BenchError("give MODULE@VERSION")
    if shutil.which("go") is None:
        raise BenchError("no go command on PATH")
    binary = bench.resolve_binary(args.bin)
    upstream = go_env_value("GOPROXY")
    tmp = tempfile.mkdtemp(prefix="goremotecache-goproxy-real-")
    server = None
    try:
        server = ProxyServer(binary, tmp, upstream)
        goproxy = server.url + "/mod"
        progress(f"serve --goproxy at {goproxy}, upstream `go env GOPROXY`")
        start = server.counts()
        first = download(args.module, tmp, "first", goproxy)
        middle = server.counts()
        second = download(args.module, tmp, "second", goproxy)
        end = server.counts()
    finally:
        if server is not None:
            server.stop()
    one, two = delta(middle, start), delta(end, middle)
    print(f"first run  ({first:.2f} s): {sorted(one.items())}")
    print(f"second run ({second:.2f} s): {sorted(two.items())}")
    fetched = {k: v for k, v in two.items() if k[0] in ("info", "mod", "zip") and k[1] != "hit"}
    if fetched:
        raise BenchError(f"the second run was not served from storage alone: {fetched}")
    if not two.get(("zip", "hit")):
        raise BenchError("the second run had no zip hit")
    shutil.rmtree(tmp, ignore_errors=True)
    print("ok: the second run came from storage")


if __name__ == "__main__":
    try:
        main()
    except BenchError as err:
        print(f"goproxy_real_upstream: {err}", file=sys.stderr)
        sys.exit(1)
