"""The `go test` workload of the GOCACHEPROG benchmarks: a real open-source Go module, pinned.

    from workload import prepare_module, go_test_argv, go_test_env
    src = prepare_module("/tmp/work")          # fetched through the module proxy, copied, writable
    subprocess.run(go_test_argv(src), cwd=src, env=go_test_env(gocache, gocacheprog))

golang.org/x/tools at v0.52.0 (go 1.26.0 in its go.mod): 216 packages, 156 with tests. With the
flags and the two exclusions below, 154 test packages pass, offline (GOPROXY=off, no services,
no docker), cold in about 7 minutes on 2 loaded cores, and a second run reports all of them
"(cached)" in about 10 s. github.com/cli/cli/v2 is refused by the module proxy here;
hashicorp/terraform does not build from its module zip (replace directives to nested modules
that zips leave out); golang.org/x/net (40) and helm (50/71) have too few packages; hugo
(190 packages) links 140 test binaries against a far larger dependency graph.

Run as a script to prepare it and print the directory and argv:  python3 bench/workload.py DEST
"""

import json
import os
import shutil
import subprocess
import sys

MODULE = "golang.org/x/tools"
VERSION = "v0.52.0"

# The exact argv, run in the directory prepare_module returns: go_test_argv(src), which is
#
#   go test -short -skip ^TestImportComment$ <the 214 packages of `go list ./...` but the
#                                              two of EXCLUDED>
#
# -count is not given: the point is that the second run reports every package "(cached)".
# -p is left to the go command (GOMAXPROCS); the default 10m per-binary timeout is kept.
#
# -short: x/tools' own switch for its slow tests (loading and type-checking all of std from
# source in go/loader, go/ssa, ...); without it the cold run takes well over 10 minutes here.
# -skip: the one test that cannot pass from the module proxy's copy. TestImportComment of
# go/analysis/passes/modernize loads testdata/importcommentmod, a directory with its own go.mod,
# which module zips leave out (it fails with "fork/exec .../go: no such file or directory", the
# directory being absent). Its package still runs all its other tests.
GO_TEST_FLAGS = ["-short", "-skip", "^TestImportComment$"]

# Packages left out, with why: both are packages whose results the go command will not reliably
# cache, so a second run could not report every package "(cached)".
# - internal/gcimporter runs no test at all at this version (its TestMain returns without
#   calling m.Run), so its binary writes no test log and its result is never cached.
# - refactor/importgraph's TestBuild exports a GOPATH tree into a new temp dir and os.Setenv's
#   GOPATH to it, so the inputs the test log records change from run to run: its result is
#   cached in some runs and not others (seen both ways here, 1 s of test).
EXCLUDED = {
    "golang.org/x/tools/internal/gcimporter":
        "TestMain never calls m.Run: no tests run, and the result is never cached",
    "golang.org/x/tools/refactor/importgraph":
        "TestBuild's inputs live in a fresh temp GOPATH: cached only sometimes",
}


def packages(src):
    """`go list ./...` in src, minus EXCLUDED (216 - 2 = 214 packages, 154 with tests)."""
    env = dict(_go_env_base(), GOPROXY="off")
    out = subprocess.run([_go(), "list", "./..."], cwd=src, env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    return [p for p in out if p not in EXCLUDED]


def go_test_argv(src):
    """The exact argv to run in src (the directory prepare_module returned)."""
    return ["go", "test", *GO_TEST_FLAGS, *packages(src)]


def _go():
    found = shutil.which("go") or "/usr/local/go/bin/go"
    return found


def _go_env_base():
    env = dict(os.environ)
    for k in ("GOFLAGS", "GOCACHEPROG", "GOWORK", "GOPROXY", "GONOSUMDB", "GOPRIVATE"):
        env.pop(k, None)
    # GOFLAGS and GOWORK must stay unset for the tests: x/tools' tests run the go command in
    # workspace and -mod=mod setups of their own, and fail with GOFLAGS=-mod=readonly or GOWORK=off.
    env.update(GOTOOLCHAIN="local")
    path = env.get("PATH", "")
    if "/usr/local/go/bin" not in path.split(os.pathsep):
        env["PATH"] = path + os.pathsep + "/usr/local/go/bin"
    return env


def go_test_env(gocache, gocacheprog=None):
    """Environment for GO_TEST_ARGV: its own GOCACHE, GOCACHEPROG if given, no network."""
    env = _go_env_base()
    env["GOCACHE"] = gocache
    env["GOPROXY"] = "off"       # no network: everything is in the module cache after prepare_module
    if gocacheprog is not None:
        env["GOCACHEPROG"] = gocacheprog
    return env


def prepare_module(dest_dir):
    """Fetches MODULE@VERSION through the module proxy and copies it to dest_dir/<name>@<version>
    (writable), then downloads its dependencies. Idempotent: a finished copy is reused.
    Returns the module's directory."""
    target = os.path.join(dest_dir, f"{MODULE.rsplit('/', 1)[-1]}@{VERSION}")
    marker = os.path.join(target, ".prepared")
    if os.path.exists(marker):
        return target
    env = _go_env_base()
    out = subprocess.run([_go(), "mod", "download", "-json", f"{MODULE}@{VERSION}"], env=env,
                         check=True, capture_output=True, text=True, cwd=dest_dir if os.path.isdir(dest_dir) else None)
    info = json.loads(out.stdout)
    if info.get("Error"):
        raise RuntimeError(f"go mod download {MODULE}@{VERSION}: {info['Error']}")
    os.makedirs(dest_dir, exist_ok=True)
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(info["Dir"], target, symlinks=True)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o200)
    os.chmod(target, os.stat(target).st_mode | 0o200)
    subprocess.run([_go(), "mod", "download"], env=env, cwd=target, check=True)
    with open(marker, "w") as f:
        f.write(f"{MODULE}@{VERSION}\n")
    return target


if __name__ == "__main__":
    src = prepare_module(sys.argv[1] if len(sys.argv) > 1 else "/tmp/goremotecache-workload")
    argv = go_test_argv(src)
    print(src)
    print(" ".join(argv[:5]), f"... ({len(argv) - 5} packages)")
