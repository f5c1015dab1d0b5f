"""A real S3 server (MinIO) and a TCP latency proxy for the GOCACHEPROG benchmarks.

Python 3.11 standard library only; importable, and runnable as a smoke test:

    python3 bench/stores.py            # install MinIO if missing, start it, make a bucket, stop

MinIO is installed with the go command from the Go module proxy (no prebuilt binaries), at a
pinned version, into target/bench-tools/minio/<version>/bin. The first install compiles MinIO
(about 5-10 minutes on 2 cores); later runs reuse the binary.

    from stores import MinioStore, LatencyProxy
    with MinioStore() as store:                 # started, bucket created
        store.endpoint, store.bucket            # http://127.0.0.1:PORT, "gocache"
        store.env()                             # AWS_ACCESS_KEY_ID etc. for the client
        with LatencyProxy("127.0.0.1", store.port, 20) as proxy:
            proxy.endpoint                      # same store, 20 ms more per round trip
        store.request_counts()                  # {"GetObject": n, "PutObject": n, ...}
        store.bytes_stored("prefix/")           # sum of object sizes (ListObjectsV2)
        store.disk_bytes()                      # bytes under the data directory
"""

import asyncio
import atexit
import datetime
import hashlib
import hmac
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ACCESS_KEY = "AKIDGOREMOTECACHE"
SECRET_KEY = "test-secret-key-for-goremotecache"
REGION = "us-east-1"

# github.com/minio/minio has no semver tags (its RELEASE.* tags are not Go versions, and the
# proxy refuses them), so it is pinned by pseudo-version: the commit of 2026-02-12, the newest
# the proxy serves. Its go.mod has no replace directives, so `go install module@version` works.
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


class StoreError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def go_binary():
    found = shutil.which("go")
    if found:
        return found
    if os.path.exists("/usr/local/go/bin/go"):
        return "/usr/local/go/bin/go"
    raise StoreError("no go command on PATH (nor /usr/local/go/bin/go)")


# --- SigV4 -----------------------------------------------------------------------------------


def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _uri_encode(s, keep_slash):
    return urllib.parse.quote(s, safe="/~" if keep_slash else "~")


def s3_request(endpoint, method, path, query=None, body=b"", headers=None,
               access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, timeout=30):
    """Sends one SigV4-signed S3 request (path style); returns (status, headers, body bytes)."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.netloc
    query = query or {}
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    hdrs = {k.lower(): str(v).strip() for k, v in (headers or {}).items()}
    hdrs.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
    canonical_query = "&".join(
        f"{_uri_encode(k, False)}={_uri_encode(str(v), False)}" for k, v in sorted(query.items()))
    signed = sorted(hdrs)
    canonical = "\n".join([
        method, _uri_encode(path, True), canonical_query,
        "".join(f"{k}:{hdrs[k]}\n" for k in signed), ";".join(signed), payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), "s3"),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                             f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        target = _uri_encode(path, True) + ("?" + canonical_query if canonical_query else "")
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _strip_ns(tag):
    return tag.rsplit("}", 1)[-1]


def list_objects(endpoint, bucket, prefix="", **auth):
    """Yields (key, size) for every object under prefix (ListObjectsV2, all pages)."""
    token = None
    while True:
        query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        status, _, body = s3_request(endpoint, "GET", f"/{bucket}", query=query, **auth)
        if status != 200:
            raise StoreError(f"ListObjectsV2 {bucket}/{prefix}: HTTP {status}: {body[:300]!r}")
        root = ET.fromstring(body)
        token = None
        truncated = False
        for child in root:
            tag = _strip_ns(child.tag)
            if tag == "Contents":
                fields = {_strip_ns(c.tag): c.text for c in child}
                yield fields["Key"], int(fields["Size"])
            elif tag == "NextContinuationToken":
                token = child.text
            elif tag == "IsTruncated":
                truncated = child.text == "true"
        if not truncated or not token:
            return


# --- MinIO -----------------------------------------------------------------------------------


class MinioStore:
    """A MinIO server (single drive) on 127.0.0.1 with a fresh data directory and one bucket."""

    def __init__(self, bucket="gocache", install_root=None, data_dir=None, log_path=None, nice=0):
        """nice: the server's scheduling niceness (a benchmark on one machine gives the build
        priority over the store, which stands in for a machine of its own)."""
        self.bucket = bucket
        self.nice = nice
        self.install_root = install_root or os.path.join(
            REPO_ROOT, "target", "bench-tools", "minio", MINIO_VERSION)
        self.binary = os.path.join(self.install_root, "bin", "minio")
        self._own_tmp = None
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None
        self.port = None
        self.endpoint = None
        self.start_seconds = None

    # install

    def install(self, quiet=False):
        """go install MINIO_MODULE@MINIO_VERSION into install_root/bin unless already there."""
        if os.path.exists(self.binary):
            return self.binary
        go = go_binary()
        os.makedirs(os.path.dirname(self.binary), exist_ok=True)
        env = dict(os.environ, GOBIN=os.path.dirname(self.binary), GOFLAGS="", GOTOOLCHAIN="local",
                   CGO_ENABLED="0", GOOS="", GOARCH="")
        env.pop("GOCACHEPROG", None)
        if not quiet:
            print(f"installing {MINIO_MODULE}@{MINIO_VERSION} (a long compile)...", file=sys.stderr)
        result = subprocess.run(
            [go, "install", "-trimpath", f"{MINIO_MODULE}@{MINIO_VERSION}"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0 or not os.path.exists(self.binary):
            raise StoreError(f"go install minio failed:\n{result.stdout[-4000:]}")
        return self.binary

    # lifecycle

    def start(self, timeout=60):
        self.install()
        if self.data_dir is None:
            self._own_tmp = tempfile.mkdtemp(prefix="goremotecache-minio-")
            self.data_dir = os.path.join(self._own_tmp, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        if self.log_path is None:
            self.log_path = os.path.join(self._own_tmp or self.data_dir + ".log.d", "minio.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        env = dict(os.environ)
        env.update(
            MINIO_ROOT_USER=ACCESS_KEY,
            MINIO_ROOT_PASSWORD=SECRET_KEY,
            MINIO_REGION=REGION,
            MINIO_PROMETHEUS_AUTH_TYPE="public",   # /minio/v2/metrics/* without a bearer token
            MINIO_BROWSER="off",                  # no web console
            MINIO_UPDATE="off",
            MINIO_CALLHOME_ENABLE="off",
            HOME=os.path.dirname(self.log_path),  # MinIO writes ~/.minio
        )
        last_error = None
        for _attempt in range(3):  # retry on a port race
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            log = open(self.log_path, "ab")
            began = time.perf_counter()
            self.proc = subprocess.Popen(
                ["nice", "-n", str(self.nice), self.binary, "server", "--quiet", "--anonymous",
                 "--address", f"127.0.0.1:{self.port}", self.data_dir],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
            log.close()
            try:
                self._wait_ready(timeout)
                self._make_bucket(timeout)
            except StoreError as e:
                last_error = e
                self._kill()
                continue
            except BaseException:
                self._kill()
                raise
            self.start_seconds = time.perf_counter() - began
            atexit.register(self.stop)  # no orphaned server if the caller forgets stop()
            return self
        raise StoreError(f"MinIO did not start: {last_error}; log {self.log_path}:\n"
                         + self._log_tail())

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StoreError(f"exited with status {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/minio/health/ready")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise StoreError(f"not ready after {timeout}s")

    def _make_bucket(self, timeout):
        # /minio/health/ready can answer 200 a moment before the S3 API is initialized
        # (503 XMinioServerNotInitialized), notably on a loaded machine: retry until timeout.
        deadline = time.monotonic() + timeout
        while True:
            status, _, body = s3_request(self.endpoint, "PUT", f"/{self.bucket}")
            if status in (200, 409):  # 409: BucketAlreadyOwnedByYou on a reused data dir
                return
            if status != 503 or time.monotonic() > deadline:
                raise StoreError(f"CreateBucket {self.bucket}: HTTP {status}: {body[:300]!r}")
            time.sleep(0.1)

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self, remove_data=True):
        atexit.unregister(self.stop)
        self._kill()
        self.proc = None
        if remove_data and self._own_tmp:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # for the client

    def env(self):
        """Environment for an S3 client of this store (credentials, region, no AWS config)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": REGION, "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}

    # measurements

    def metrics_text(self, path="/minio/metrics/v3/api/requests"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            text = resp.read().decode()
            if resp.status != 200:
                raise StoreError(f"metrics {path}: HTTP {resp.status}: {text[:300]}")
            return text
        finally:
            conn.close()

    def request_counts(self):
        """S3 requests served since start: {"GetObject": n, "PutObject": n, ..., "total": n,
        "errors_4xx": {"GetObject": n}, "errors_5xx": {...}, "bytes_received": n, "bytes_sent": n}.

        From MinIO's Prometheus metrics v3 (/minio/metrics/v3/api/requests, public because
        MINIO_PROMETHEUS_AUTH_TYPE=public), which are current: the v2 /minio/v2/metrics/* groups
        are cached for several seconds and would miss the last requests. Counters only grow:
        subtract two readings. A GetObject miss (NoSuchKey) counts in GetObject and in
        errors_4xx. This module's own requests (CreateBucket, ListObjectsV2 in bytes_stored)
        count too. Bytes are of request and response bodies.
        """
        counts = {"total": 0, "errors_4xx": {}, "errors_5xx": {}}
        for line in self.metrics_text().splitlines():
            m = re.match(r'minio_api_requests_(total|4xx_errors_total|5xx_errors_total|'
                         r'traffic_received_bytes|traffic_sent_bytes)\{([^}]*)\}\s+(\S+)', line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if labels.get("type", "s3") != "s3":
                continue
            kind, n = m.group(1), int(float(m.group(3)))
            api = _api_name(labels.get("name", "?"))
            if kind == "total":
                counts[api] = counts.get(api, 0) + n
                counts["total"] += n
            elif kind.startswith("traffic"):
                key = "bytes_received" if "received" in kind else "bytes_sent"
                counts[key] = counts.get(key, 0) + n
            else:
                errors = counts["errors_4xx" if kind.startswith("4") else "errors_5xx"]
                errors[api] = errors.get(api, 0) + n
        return counts

    def bytes_stored(self, prefix=""):
        """(objects, bytes): the count and total size of the objects under prefix."""
        n = total = 0
        for _key, size in list_objects(self.endpoint, self.bucket, prefix):
            n += 1
            total += size
        return n, total

    def disk_bytes(self):
        """Bytes of the files under the bucket's directory in the data dir (MinIO's xl.meta
        with small objects inlined, part files for large ones): the real disk use, metadata
        included. Not per prefix (MinIO keeps a directory per key, so prefix/ works as a path)."""
        root = os.path.join(self.data_dir, self.bucket)
        total = 0
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total


_API_NAMES = {
    "getobject": "GetObject", "putobject": "PutObject", "headobject": "HeadObject",
    "listobjectsv2": "ListObjectsV2", "putbucket": "CreateBucket", "deleteobject": "DeleteObject",
    "deletemultipleobjects": "DeleteObjects", "copyobject": "CopyObject",
    "newmultipartupload": "CreateMultipartUpload", "putobjectpart": "UploadPart",
    "completemultipartupload": "CompleteMultipartUpload", "headbucket": "HeadBucket",
}


def _api_name(api):
    return _API_NAMES.get(api.lower(), api)


# --- Latency proxy ---------------------------------------------------------------------------


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 adding delay_ms to every round trip (half each way).

    Like tests/support/proxy.rs: each direction reads whatever arrives and delivers it
    delay/2 later, while reading continues (a long link, not a stop-and-wait one). Runs an
    asyncio loop in a daemon thread; any number of concurrent connections.
    """

    def __init__(self, target_host, target_port, delay_ms, chunk=256 * 1024):
        self.target = (target_host, int(target_port))
        self.one_way = delay_ms / 2000.0
        self.chunk = chunk
        self.loop = asyncio.new_event_loop()
        self._server = None
        self.connections = 0
        self.bytes_forwarded = 0   # both directions: what crossed the "link"
        started = threading.Event()
        failure = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self._server = self.loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024))
            except Exception as e:  # noqa: BLE001
                failure.append(e)
                started.set()
                return
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

        self.thread = threading.Thread(target=run, name=f"latency-proxy-{delay_ms}ms", daemon=True)
        self.thread.start()
        started.wait()
        if failure:
            raise failure[0]
        self.port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def _handle(self, client_r, client_w):
        try:
            await self._forward(client_r, client_w)
        except asyncio.CancelledError:  # stop(): swallowed, Python 3.11's stream callback
            client_w.close()            # would log a cancelled handler as an error

    async def _forward(self, client_r, client_w):
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [asyncio.ensure_future(self._pump(client_r, server_w)),
                 asyncio.ensure_future(self._pump(server_r, client_w))]
        pending = pumps
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.result() for t in done):
                break  # a reset: close both sides, which ends the other pump
        for w in (client_w, server_w):
            w.close()
        if pending:
            await asyncio.wait(pending, timeout=10)
            for t in pending:
                t.cancel()

    async def _pump(self, reader, writer):
        """Copies reader to writer, each piece delayed; True on a clean end, False on an error."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        delay = self.one_way

        async def deliver():
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    due, data = item
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                return True
            except (OSError, RuntimeError):
                return False

        writer_task = asyncio.ensure_future(deliver())
        clean = True
        try:
            while not writer_task.done():
                data = await reader.read(self.chunk)
                if not data:
                    break
                self.bytes_forwarded += len(data)
                queue.put_nowait((loop.time() + delay if delay else 0.0, data))
        except OSError:
            clean = False
        queue.put_nowait(None)
        return await writer_task and clean

    def bytes_total(self):
        """Bytes forwarded so far, both directions (read from the loop's thread: an int)."""
        return self.bytes_forwarded

    def stop(self):
        """Closes the listener and every forwarded connection; joins the thread."""
        async def close():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()
        if self.thread.is_alive() and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(close(), self.loop)
            self.thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main():
    store = MinioStore()
    began = time.perf_counter()
    store.install()
    installed = time.perf_counter() - began
    store.start()
    try:
        print(f"minio {MINIO_VERSION} at {store.endpoint}, bucket {store.bucket}, "
              f"started in {store.start_seconds:.2f}s (install/check {installed:.1f}s)")
        status, _, _ = s3_request(store.endpoint, "PUT", f"/{store.bucket}/smoke/a", body=b"x" * 1000)
        assert status == 200, status
        status, _, body = s3_request(store.endpoint, "GET", f"/{store.bucket}/smoke/a")
        assert status == 200 and body == b"x" * 1000, status
        with LatencyProxy("127.0.0.1", store.port, 20) as proxy:
            t = time.perf_counter()
            status, _, body = s3_request(proxy.endpoint, "GET", f"/{store.bucket}/smoke/a")
            print(f"GET through a 20 ms proxy: HTTP {status} in {(time.perf_counter() - t) * 1000:.1f} ms")
        print("bytes_stored('smoke/'):", store.bytes_stored("smoke/"), "disk:", store.disk_bytes())
        print("request_counts:", store.request_counts())
    finally:
        store.stop()


if __name__ == "__main__":
    main()


def go_env_value(name):
    """`go env NAME` of this environment: the module proxy's default upstream is the machine's
    own, never a name written here."""
    value = subprocess.run(["go", "env", name], capture_output=True, text=True).stdout.strip()
    if not value:
        raise RuntimeError(f"`go env {name}` gave nothing")
    return value


class GoproxyServer:
    """`goremotecache serve --goproxy` on a storage directory, with anonymous reads (the go
    command sends credentials over https only)."""

    def __init__(self, binary, tmp, upstream, extra=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, "serve.log"), "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--storage-dir", os.path.join(tmp, "storage"), "--listen",
             f"127.0.0.1:{self.port}", "--allow-anonymous-read", "--goproxy",
             "--goproxy-upstream", upstream, *extra],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start; see {self.log.name}")
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

    def cpu_seconds(self):
        """User and system CPU time of the server process so far (Linux /proc)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
