#!/usr/bin/env bash
# Runs the end-to-end S3 test against moto, an S3 server written independently of the
# in-process one the other tests use (installed from PyPI into target/moto-venv).
#
#   scripts/test-external-s3.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/moto-venv
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "installing moto[server] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]==5.2.5"
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT

export AWS_ACCESS_KEY_ID=goremotecache AWS_SECRET_ACCESS_KEY=goremotecache AWS_REGION=us-east-1
endpoint="http://127.0.0.1:$port"
"$venv/bin/python" - "$endpoint" <<'PY'
import sys, time
import boto3
endpoint = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
for attempt in range(100):
    try:
        s3.create_bucket(Bucket="gocache")
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit(f"moto did not come up at {endpoint}: see target/moto.log")
PY

GOREMOTECACHE_TEST_S3_ENDPOINT="$endpoint" GOREMOTECACHE_TEST_S3_BUCKET=gocache \
  cargo test --profile test-release --test suite -- --ignored s3_e2e::an_external_s3_server_serves_a_fresh_machine
