#!/usr/bin/env python3
"""The three peer GOCACHEPROG programs, set up to run against the same S3 store as goremotecache.

Importable (Python 3.11, standard library only):

    import peers
    paths = peers.install("target/peers/bin")            # go install, pinned, into a private GOBIN
    paths = peers.install("target/peers/bin", sources={"cacheprog": "/src/cacheprog"})  # go build
    peers.version("cacheprog", paths["cacheprog"], sources)  # "v1.3.0" or "commit <sha>"
    prog, env = peers.command("cacheprog", paths["cacheprog"], endpoint="http://127.0.0.1:PORT",
                              bucket="gocache", prefix="peer-cacheprog", region="us-east-1",
                              access_key=AK, secret_key=SK, local_dir="/tmp/x/cache")
    # then run the go command with os.environ | env | {"GOCACHEPROG": prog}

Or as a check from the repository root (cold build, then a fresh local directory against the
same bucket prefix, for each peer, against examples/s3_server.rs):

    python3 bench/peers.py [--gobin target/peers/bin] [--only NAME ...] \
        [--cacheprog-src DIR] [--gobuildcache-src DIR]

All three peers run in direct GOCACHEPROG mode (stdin/stdout); none needs a helper process,
so there are no start/stop hooks. Every peer gets its settings through environment variables,
so GOCACHEPROG is only the binary (plus the `direct` subcommand for cacheprog).

Common to all three: they use aws-sdk-go-v2 with config.LoadDefaultConfig, so
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION work, and AWS_ENDPOINT_URL_S3 sets the
endpoint for the ones without their own endpoint setting. For an endpoint whose host is an IP
literal (http://127.0.0.1:PORT) the SDK's S3 endpoint rules use path-style addressing by
themselves (the `url.isIp` rule in service/s3/endpoints.go), so no path-style switch is needed
for a peer that has none. AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE point at nothing and
AWS_EC2_METADATA_DISABLED=true, so no ambient profile or IMDS lookup interferes.

Installation here (November 2026): the module proxy serves go-cache-plugin v0.1.1 but refuses
@v/list for all three modules and refuses every cacheprog and gobuildcache version tried (403
"This module version is not available"), so only go-cache-plugin installs from the proxy.
The other two are built from a checkout of their public repositories instead: give
--cacheprog-src DIR / --gobuildcache-src DIR (install(..., sources={name: DIR})), and the peer
is built there with `go build` into the private GOBIN (its go.mod dependencies come from the
module proxy, which serves them) and its version is the checkout's commit (`git rev-parse
HEAD`, "+dirty" if the work tree has changes), recorded in the results. Without a source
directory install() raises PeerError for them and main() and compare.py skip them. Measured
here: cacheprog at tag v1.3.0 (commit 9264c952) and gobuildcache at v1.5.0 plus two commits
(b2aedd41, 2026-05-05: "s3: use path style").

bazel-remote (github.com/buchgr/bazel-remote/v2, the module root), pinned v2.6.1, is not a
GOCACHEPROG program but a cache server; compare.py runs it behind bench/bazelprog, a
GOCACHEPROG client for its HTTP /ac/ and /cas/ endpoints. install_bazel_remote() installs it
like go-cache-plugin; build_bench_program() builds bench/bazelprog and bench/memprog.

go-cache-plugin (github.com/tailscale/go-cache-plugin, cmd/go-cache-plugin), pinned v0.1.1
    (tag of 2025-06-18, commit d651c791. The proxy serves it; @v/list is refused, so whether a
    newer tag exists could not be checked here. Upstream main has later commits: its go.mod
    needs Go 1.26.1.) Installed from a small module requiring v0.1.1 (see _pinning_module).
    Configured by GOCACHE_DIR (local staging dir, required), GOCACHE_S3_BUCKET, GOCACHE_S3_REGION
    (set it: without it the tool calls GetBucketLocation), GOCACHE_KEY_PREFIX; endpoint by
    GOCACHE_S3_ENDPOINT_URL + GOCACHE_S3_PATH_STYLE=true (--s3-endpoint-url, --s3-path-style in
    v0.1.1; AWS_ENDPOINT_URL_S3 is set too, for versions without them).
    Layout: <prefix>/action/xx/<id> (text "<outputID> <unixnano>") and <prefix>/output/xx/<id>.
    Put: local write, then a background upload: HEAD output (If-Match md5) + PUT output + PUT
    action. Get miss locally: GET action, then GET output. At exit: the close request waits for
    every queued upload (taskgroup Wait, no overall timeout; each upload has a 1-minute
    timeout), so the go command's close includes the upload tail. Upload concurrency
    GOCACHE_S3_CONCURRENCY (default NumCPU). It also has `serve`/`connect` modes (a long-lived
    server on a TCP port, plus module/reverse proxies); not used here.

cacheprog (github.com/platacard/cacheprog, cmd/cacheprog), v1.3.0, built from a checkout
    (newest tag; the proxy refuses it, and v1.0.0 to v1.1.1, with 403. Checked here at the
    v1.3.0 commit against examples/s3_server.rs: a cold `go build std`, then a fresh local
    directory compiling nothing.)
    GOCACHEPROG="cacheprog direct" (direct is also its default subcommand). Configured by
    CACHEPROG_REMOTE_STORAGE_TYPE=s3, CACHEPROG_S3_ENDPOINT (http:// or https://; the
    minio+http:// scheme is only for MinIO), CACHEPROG_S3_FORCE_PATH_STYLE=true,
    CACHEPROG_S3_REGION (set it: otherwise GetBucketLocation), CACHEPROG_S3_BUCKET,
    CACHEPROG_S3_PREFIX (a template: {% GOOS %}, {% GOARCH %}, {% env.X %}),
    CACHEPROG_S3_ACCESS_KEY_ID / CACHEPROG_S3_ACCESS_KEY_SECRET (static credentials), and
    CACHEPROG_ROOT_DIRECTORY (local dir; the README's CACHEPROG_DISK_STORAGE_ROOT is not what the
    code reads). One object per action, <prefix>/<actionID hex>, zstd-compressed, the output ID
    and sizes in x-amz-meta-* headers. Put: HEAD (If-Match md5) then PUT with
    x-amz-checksum-sha256 and a precomputed payload hash. Get: one GET. At exit: the close request
    waits for background uploads for at most CACHEPROG_MAX_BACKGROUND_WAIT (default 10s), then
    answers and abandons the rest (logs "background jobs did not finish in time"); left at the
    default here, pass extra_env={"CACHEPROG_MAX_BACKGROUND_WAIT": "0"} to wait without limit.
    Uploads are unbounded in concurrency unless CACHEPROG_MAX_CONCURRENT_REMOTE_PUTS is set.

gobuildcache (github.com/richardartoul/gobuildcache, main package at the module root), built
from a checkout (the proxy refuses the module; its repository has tags v1.3.0 to v1.5.0; checked
here at b2aedd41 like cacheprog)
    The entry says "latest" for a `go install` where the proxy serves it; from a checkout the
    commit is its version. Configured by BACKEND_TYPE=s3, S3_BUCKET, S3_PREFIX (concatenated with
    the hex action ID as is: give it a trailing "/"; default "gobuildcache/"), CACHE_DIR,
    LOCK_DIR (fslock locks; default /tmp/gobuildcache/locks is shared by every run, so it is put
    under the local dir), and the AWS_* variables (no endpoint or path-style setting of its own:
    AWS_ENDPOINT_URL_S3 is how to reach a non-AWS store). Newer versions also read each variable
    as GOBUILDCACHE_<NAME>, which wins; both spellings are set. Startup: HeadBucket (fails the
    tool if the bucket is unreachable). One object per action, <prefix><actionID hex>, LZ4 by
    default (COMPRESSION), metadata in x-amz-meta-*. Put: local write, then an async PUT; at most
    128*GOMAXPROCS uploads in flight, beyond that a put is NOT uploaded (logged, not retried).
    At exit: close waits for all in-flight uploads (no timeout) before answering. PRINT_STATS
    defaults to true in newer versions (stats on stderr).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

PEERS = {
    "go-cache-plugin": {
        "module": "github.com/tailscale/go-cache-plugin",
        "package": "github.com/tailscale/go-cache-plugin/cmd/go-cache-plugin",
        "version": "v0.1.1",
        "binary": "go-cache-plugin",
        "homepage": "https://github.com/tailscale/go-cache-plugin",
    },
    "cacheprog": {
        "module": "github.com/platacard/cacheprog",
        "package": "github.com/platacard/cacheprog/cmd/cacheprog",
        "version": "v1.3.0",
        "subdir": "cmd/cacheprog",
        "binary": "cacheprog",
        "homepage": "https://github.com/platacard/cacheprog",
    },
    "gobuildcache": {
        "module": "github.com/richardartoul/gobuildcache",
        "package": "github.com/richardartoul/gobuildcache",
        "version": "latest",  # unpinned: see the module docstring
        "subdir": ".",
        "binary": "gobuildcache",
        "homepage": "https://github.com/richardartoul/gobuildcache",
    },
}

# A cache server, not a GOCACHEPROG program: compare.py reaches it through bench/bazelprog.
BAZEL_REMOTE = {
    "module": "github.com/buchgr/bazel-remote/v2",
    "package": "github.com/buchgr/bazel-remote/v2",
    "version": "v2.6.1",
    "binary": "bazel-remote",
    "homepage": "https://github.com/buchgr/bazel-remote",
}

for _peer in [*PEERS.values(), BAZEL_REMOTE]:
    _peer["module@version"] = f"{_peer['package']}@{_peer['version']}"


class PeerError(Exception):
    """A peer could not be installed or run."""


def _go():
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go):
        raise PeerError("no go command on PATH (nor /usr/local/go/bin/go)")
    return go


def installed_version(path):
    """The module version recorded in a Go binary (`go version -m`), or None."""
    try:
        out = subprocess.run([_go(), "version", "-m", path], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "mod":
            return words[2]
    return None


def _pinning_module(gobin, name, peer, env):
    """Writes target/peers/mod/<name>: a module requiring exactly the pinned version.

    `go install pkg@version` also looks up the module's deprecation, which reads @v/list; the
    module proxy here refuses @v/list for these modules (403) even where it serves the pinned
    version, so the pinned version is required from a small module instead, with the peer's own
    go.sum (the checksum database, reached through the proxy, lacks some of its dependencies).
    """
    result = subprocess.run([_go(), "mod", "download", "-json", f"{peer['module']}@{peer['version']}"],
                            env=env, cwd=gobin, capture_output=True, text=True)
    try:
        info = json.loads(result.stdout)
    except ValueError:
        info = {"Error": result.stderr.strip() or f"exit {result.returncode}"}
    if info.get("Error") or result.returncode != 0:
        why = info.get("Error") or result.stderr.strip()
        if "403" in why or "not available" in why:
            why += "\n(the module proxy refuses this module version: it cannot be installed from here)"
        raise PeerError(f"go mod download {peer['module']}@{peer['version']} failed:\n{why}")
    moddir = os.path.join(os.path.dirname(gobin), "mod", name)
    os.makedirs(moddir, exist_ok=True)
    goversion = subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(moddir, "go.mod"), "w") as f:
        f.write(f"module goremotecache.local/peers/{name}\n\ngo {goversion.removeprefix('go')}\n\n"
                f"require {peer['module']} {peer['version']}\n")
    with open(os.path.join(moddir, "tools.go"), "w") as f:
        f.write(f"//go:build tools\n\npackage tools\n\nimport _ \"{peer['package']}\"\n")
    shutil.copyfile(os.path.join(info["Dir"], "go.sum"), os.path.join(moddir, "go.sum"))
    os.chmod(os.path.join(moddir, "go.sum"), 0o644)
    return moddir


def _go_env(gobin):
    env = dict(os.environ, GOBIN=gobin, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    env.pop("GOCACHEPROG", None)  # never build the peers through a cache program
    return env


def _install_module(gobin, name, spec, env):
    """`go install`s spec's package at its version into gobin unless that version is there."""
    path = os.path.join(gobin, spec["binary"])
    have = installed_version(path) if os.path.exists(path) else None
    if have is not None and (spec["version"] == "latest" or have == spec["version"]):
        return path
    if spec["version"] == "latest":
        argv, cwd = [_go(), "install", spec["module@version"]], None
    else:
        argv, cwd = [_go(), "install", spec["package"]], _pinning_module(gobin, name, spec, env)
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        why = result.stderr.strip()
        if "403 Forbidden" in why or "not available" in why:
            why += "\n(the module proxy refuses this module: it cannot be installed from here)"
        raise PeerError(f"go install {spec['module@version']} failed (exit {result.returncode}):\n{why}")
    if not os.path.exists(path):
        raise PeerError(f"go install {spec['module@version']} succeeded but {path} does not exist")
    return path


def source_commit(src):
    """The commit of a checkout (`git rev-parse HEAD`), with "+dirty" if its work tree differs."""
    try:
        head = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        raise PeerError(f"{src} is not a git checkout ({err}): give a clone of the peer's repository")
    return head + ("+dirty" if dirty else "")


def _build_from_source(gobin, name, peer, src, env):
    """`go build`s the peer's main package in a checkout of its repository into gobin."""
    src = os.path.abspath(src)
    try:
        with open(os.path.join(src, "go.mod")) as f:
            first = f.readline().split()
    except OSError as err:
        raise PeerError(f"--{name}-src {src}: no go.mod there ({err.strerror}): give a checkout of "
                        f"{peer['homepage']}")
    if first[1:2] != [peer["module"]]:
        raise PeerError(f"--{name}-src {src}: its go.mod declares {' '.join(first[1:]) or 'nothing'}, "
                        f"not {peer['module']}: give a checkout of {peer['homepage']}")
    source_commit(src)  # fails early on a directory that is not a checkout
    path = os.path.join(gobin, peer["binary"])
    # -mod=readonly: the checkout is left as it is (gobuildcache's go.mod is not tidy, and
    # -mod=mod would rewrite it); -buildvcs=false: the commit is recorded by version().
    argv = [_go(), "build", "-mod=readonly", "-buildvcs=false", "-o", path, "./" + peer["subdir"]]
    result = subprocess.run(argv, env=dict(env, GOFLAGS=""), cwd=src, capture_output=True, text=True)
    if result.returncode != 0:
        raise PeerError(f"go build of {name} in {src} failed (exit {result.returncode}):\n"
                        f"{result.stderr.strip()}")
    return path


def install(gobin, names=None, sources=None):
    """Installs each peer into gobin and returns {name: path}.

    A peer named in `sources` ({name: checkout directory}) is built there with `go build`
    (every call: the go command's own build cache makes a rebuild cheap); the others are
    `go install`ed at their pinned version unless a binary of that version is already there
    (see _pinning_module; "latest" with plain `go install pkg@latest`). Raises PeerError naming
    the peer and quoting the go command's error (a 403 "This module version is not available"
    is the module proxy refusing the module).
    """
    gobin = os.path.abspath(gobin)
    os.makedirs(gobin, exist_ok=True)
    env = _go_env(gobin)
    sources = sources or {}
    paths = {}
    for name in names or PEERS:
        if sources.get(name):
            paths[name] = _build_from_source(gobin, name, PEERS[name], sources[name], env)
        else:
            paths[name] = _install_module(gobin, name, PEERS[name], env)
    return paths


def version(name, path, sources=None):
    """What a peer's results are pinned to: "commit <sha>" for one built from a checkout,
    else the module version recorded in the binary."""
    if (sources or {}).get(name):
        return f"commit {source_commit(sources[name])}"
    return installed_version(path) or PEERS[name]["version"]


def install_bazel_remote(gobin):
    """`go install`s bazel-remote at its pinned version into gobin; returns its path."""
    gobin = os.path.abspath(gobin)
    os.makedirs(gobin, exist_ok=True)
    return _install_module(gobin, "bazel-remote", BAZEL_REMOTE, _go_env(gobin))


def build_bench_program(gobin, name):
    """`go build`s bench/<name> (bazelprog, memprog) into gobin ([`bench.build_bench_program`])."""
    import bench  # noqa: E402  (bench.py does not import this module)
    try:
        return bench.build_bench_program(gobin, name)
    except bench.BenchError as err:
        raise PeerError(str(err))


def _aws_env(endpoint, region, access_key, secret_key):
    return {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_SESSION_TOKEN": "",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_PROFILE": "",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def command(name, binary, *, endpoint, bucket, prefix, region, access_key, secret_key, local_dir,
            extra_env=None):
    """Returns (GOCACHEPROG string, env dict) making the go command use that peer on that store.

    Merge the env dict over the environment of the go command (it is inherited by the peer).
    `prefix` is a key prefix without a trailing slash; local_dir is created if missing.
    """
    os.makedirs(local_dir, exist_ok=True)
    env = _aws_env(endpoint, region, access_key, secret_key)
    if name == "go-cache-plugin":
        prog = shlex.quote(binary)
        env.update({
            "GOCACHE_DIR": local_dir,
            "GOCACHE_S3_BUCKET": bucket,
            "GOCACHE_S3_REGION": region,
            "GOCACHE_KEY_PREFIX": prefix,
            "GOCACHE_S3_ENDPOINT_URL": endpoint,
            "GOCACHE_S3_PATH_STYLE": "true",
        })
    elif name == "cacheprog":
        prog = f"{shlex.quote(binary)} direct"
        env.update({
            "CACHEPROG_REMOTE_STORAGE_TYPE": "s3",
            "CACHEPROG_S3_ENDPOINT": endpoint,
            "CACHEPROG_S3_FORCE_PATH_STYLE": "true",
            "CACHEPROG_S3_REGION": region,
            "CACHEPROG_S3_BUCKET": bucket,
            "CACHEPROG_S3_PREFIX": prefix,
            "CACHEPROG_S3_ACCESS_KEY_ID": access_key,
            "CACHEPROG_S3_ACCESS_KEY_SECRET": secret_key,
            "CACHEPROG_ROOT_DIRECTORY": local_dir,
        })
    elif name == "gobuildcache":
        prog = shlex.quote(binary)
        settings = {
            "BACKEND_TYPE": "s3",
            "S3_BUCKET": bucket,
            "S3_PREFIX": prefix.rstrip("/") + "/",
            "CACHE_DIR": local_dir,
            "LOCK_DIR": os.path.join(local_dir, "locks"),
        }
        env.update(settings)
        env.update({f"GOBUILDCACHE_{k}": v for k, v in settings.items()})
    else:
        raise PeerError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    env.update(extra_env or {})
    return prog, env


# ---------------------------------------------------------------------------------------------
# The check: python3 bench/peers.py

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCESS_KEY = "AKIDGOREMOTECACHE"
SECRET_KEY = "test-secret-key-for-goremotecache"


def start_s3_server(path):
    """examples/s3_server.rs, through bench_s3's wrapper: (server, endpoint)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_s3 import Server  # noqa: E402  (also used by the S3 tier's benchmark)
    server = Server(path, [0])
    return server, server.proxies[0]


def _go_build(prog, env, gocache, verbose):
    full = dict(os.environ)
    full.pop("GOCACHEPROG", None)
    full.update(env, GOCACHE=gocache, GOCACHEPROG=prog, GOTOOLCHAIN="local", GOFLAGS="")
    argv = [_go(), "build"] + (["-x"] if verbose else []) + ["std"]
    start = time.perf_counter()
    result = subprocess.run(argv, env=full, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise PeerError(f"go build std failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    compiles = sum(1 for line in result.stderr.splitlines() if re.search(r"/compile( |$)", line))
    return seconds, compiles, result.stderr


def check(paths, server, endpoint, tmp, sources=None):
    rows = []
    for name, binary in paths.items():
        prefix = f"peer-{name}-{int(time.time())}"
        results = []
        for run, verbose in (("cold", False), ("fresh-dir warm", True)):
            server.reset()
            local = os.path.join(tmp, name, run.replace(" ", "-"))
            prog, env = command(name, binary, endpoint=endpoint, bucket="gocache", prefix=prefix,
                                region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                local_dir=os.path.join(local, "cache"))
            seconds, compiles, stderr = _go_build(prog, env, os.path.join(local, "gocache"), verbose)
            counts = server.counts()
            print(f"{name} {run}: {seconds:.2f} s, compile lines {compiles if verbose else '-'}, "
                  f"requests {json.dumps(counts, sort_keys=True)}", file=sys.stderr, flush=True)
            results.append((run, seconds, compiles if verbose else None, counts))
        rows.append((name, version(name, binary, sources), results))
    return rows


def add_source_options(parser):
    """--cacheprog-src and --gobuildcache-src: checkouts to build those peers from."""
    for name in ("cacheprog", "gobuildcache"):
        parser.add_argument(f"--{name}-src", metavar="DIR",
                            help=f"a git checkout of {PEERS[name]['homepage']} to build {name} from "
                                 f"(the module proxy refuses it; without this it is skipped)")


def source_options(args):
    return {name: getattr(args, f"{name}_src") for name in ("cacheprog", "gobuildcache")
            if getattr(args, f"{name}_src")}


def main():
    parser = argparse.ArgumentParser(description="Install the peers and check each against the example S3 server.")
    parser.add_argument("--gobin", default=os.path.join(REPO_ROOT, "target", "peers", "bin"))
    parser.add_argument("--server", default=os.path.join(REPO_ROOT, "target", "release", "examples", "s3_server"),
                        help="the built example (cargo build --release --example s3_server --features s3-server-example)")
    parser.add_argument("--only", nargs="*", choices=list(PEERS))
    add_source_options(parser)
    args = parser.parse_args()
    sources = source_options(args)
    paths = {}
    for name in args.only or PEERS:
        try:
            paths.update(install(args.gobin, [name], sources))
        except PeerError as err:
            print(f"SKIP {name}: {err}", file=sys.stderr)
    if not paths:
        print("no peer could be installed", file=sys.stderr)
        return 1
    server, endpoint = start_s3_server(args.server)
    tmp = tempfile.mkdtemp(prefix="goremotecache-peers-")
    try:
        rows = check(paths, server, endpoint, tmp, sources)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| peer | version | run | wall | compile lines | requests |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, version, results in rows:
        for run, seconds, compiles, counts in results:
            print(f"| {name} | {version} | {run} | {seconds:.2f} s | {'—' if compiles is None else compiles} | "
                  f"{json.dumps(counts, sort_keys=True)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
