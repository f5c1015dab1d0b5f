#!/usr/bin/env bash
# Opt-in end-to-end check (not run by .ci/run: it installs two linters with `go install` and
# takes minutes): golangci-lint (GOLANGCI_LINT_CACHEPROG) and staticcheck (GOCACHEPROG) keep
# their own caches in goremotecache, in a namespace of their own, and a fresh machine's run is
# served from that cache with the same findings.
#
# It installs golangci-lint and staticcheck into a temporary GOBIN, builds goremotecache,
# starts `goremotecache serve` on loopback, generates a small module with a cgo package
# (import "C") and a few findings, and runs each linter twice: on machine A (empty caches),
# then on machine B (empty local caches again, the same server). It fails unless B's run got
# its linter cache entries from the server (--stats-file: remote hits, no uploads) and both
# runs printed the same findings.
#
# Usage: scripts/linters.sh
# Environment: LINTERS ("golangci-lint staticcheck": the ones to check), GOLANGCI_LINT_VERSION
# (v2.15.0), STATICCHECK_VERSION (v0.8.2), GOREMOTECACHE_BIN
# (a built binary; default: cargo build, in CARGO_TARGET_DIR or target/). Needs go, cargo, a
# C compiler (for cgo) and python3 (to read the stats files).
set -euo pipefail

GOLANGCI_LINT_VERSION="${GOLANGCI_LINT_VERSION:-v2.15.0}"
STATICCHECK_VERSION="${STATICCHECK_VERSION:-v0.8.2}"
LINTERS="${LINTERS:-golangci-lint staticcheck}"
root="$(cd "$(dirname "$0")/.." && pwd)"

fail() {
	echo "linters.sh: FAIL: $*" >&2
	exit 1
}
for tool in go cargo python3 "$(go env CC)"; do
	command -v "$tool" >/dev/null || fail "$tool is not on PATH (see the usage at the top)"
done

work="$(mktemp -d)"
server_pid=""
cleanup() {
	if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
	# The module cache of `go install` is read-only.
	chmod -R u+w "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

export GOBIN="$work/bin"
for linter in $LINTERS; do
	case "$linter" in
	golangci-lint) module="github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION" ;;
	staticcheck) module="honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" ;;
	*) fail "LINTERS: unknown linter $linter (golangci-lint, staticcheck)" ;;
	esac
	echo "== go install $module"
	GOFLAGS=-mod=mod go install "$module" ||
		fail "go install $module failed (is the version served by $(go env GOPROXY)?)"
done
case " $LINTERS " in *" golangci-lint "*) "$GOBIN/golangci-lint" version ;; esac
case " $LINTERS " in *" staticcheck "*) "$GOBIN/staticcheck" -version ;; esac

bin="${GOREMOTECACHE_BIN:-}"
if [ -z "$bin" ]; then
	echo "== building goremotecache"
	(cd "$root" && cargo build --quiet)
	bin="${CARGO_TARGET_DIR:-$root/target}/debug/goremotecache"
fi
[ -x "$bin" ] || fail "no goremotecache binary at $bin"

echo "== starting goremotecache serve"
token="linters-sh-$(date +%s)-token"
"$bin" serve --listen 127.0.0.1:0 --storage-dir "$work/store" --tokens "rw:$token" \
	2>"$work/serve.log" &
server_pid=$!
url=""
for _ in $(seq 100); do
	url="$(sed -n 's/.*serving \(http:[^ ]*\) from.*/\1/p' "$work/serve.log")"
	[ -n "$url" ] && break
	kill -0 "$server_pid" 2>/dev/null || fail "serve exited: $(cat "$work/serve.log")"
	sleep 0.1
done
[ -n "$url" ] || fail "serve did not say where it listens: $(cat "$work/serve.log")"

echo "== generating the module"
mod="$work/mod"
mkdir -p "$mod/calc" "$mod/cgoadd"
cat >"$mod/go.mod" <<'EOF'
module example.com/lintme

go 1.22
EOF
cat >"$mod/calc/calc.go" <<'EOF'
// Package calc has findings for both linters.
package calc

import "os"

// Sum adds the numbers.
func Sum(xs []int) int {
	total := 0
	for _, x := range xs {
		total += x
	}
	n := 1 // ineffassign: overwritten before use
	n = total
	return n
}

// Clean removes a file and drops the error (errcheck).
func Clean(path string) {
	os.Remove(path)
}

func neverCalled() {} // unused (U1000)
EOF
cat >"$mod/cgoadd/cgoadd.go" <<'EOF'
// Package cgoadd uses cgo: the linters type-check the files cgo generates, which the go
// command keeps in its cache (the DiskPaths of these entries have no extension).
package cgoadd

// static int add(int a, int b) { return a + b; }
import "C"

import "strings"

// Add adds through C.
func Add(a, b int) int {
	return int(C.add(C.int(a), C.int(b)))
}

// Positive says whether x is above zero (S1002, S1008).
func Positive(x int) bool {
	if (x > 0) == true {
		return true
	}
	return false
}

// Same compares without case (SA6005).
func Same(a, b string) bool {
	return strings.ToLower(a) == strings.ToLower(b)
}
EOF

# A machine: the local cache, GOCACHE and linter cache directories, removed before each run,
# at the same paths each time as on CI runners (golangci-lint's keys for a cgo package include
# the paths of the files cgo generated, which are in the cache directory: with another path,
# its entries for that package miss). The go command's cache (the go list that both linters
# run) and each linter's own cache go through goremotecache, each in a namespace of its own on
# the server; `{GOOS}` in them comes from `go env`, as neither linter sets GOOS.
gocacheprog() { # namespace stats-file
	echo "$bin --cache-dir $work/machine/grc --lock-dir $work/machine/locks --http-url $url --namespace $1 --stats-file $2"
}
lint() { # run linter: findings, exit status and stats go to $work/<run>/
	local run="$1" linter="$2" dir="$work/$1" machine="$work/machine"
	rm -rf "$machine"
	mkdir -p "$dir" "$machine/gocache" "$machine/golangci" "$machine/staticcheck"
	local env=(
		"GOCACHE=$machine/gocache" "GOLANGCI_LINT_CACHE=$machine/golangci"
		"STATICCHECK_CACHE=$machine/staticcheck"
		"GOREMOTECACHE_HTTP_TOKEN=$token" "CGO_ENABLED=1" "GOFLAGS=-mod=mod" "GOPROXY=off"
		"GOWORK=off" "GOTOOLCHAIN=local"
	)
	local status=0
	case "$linter" in
	golangci-lint)
		(cd "$mod" && env "${env[@]}" \
			GOCACHEPROG="$(gocacheprog build "$dir/go.stats.json")" \
			GOLANGCI_LINT_CACHEPROG="$(gocacheprog "lint-golangci-{GOOS}" "$dir/golangci.stats.json")" \
			"$GOBIN/golangci-lint" run ./... >"$dir/golangci-lint.out" 2>"$dir/golangci-lint.err") || status=$?
		;;
	staticcheck)
		# staticcheck reads GOCACHEPROG itself: its own entries and its go list's share it.
		(cd "$mod" && env "${env[@]}" \
			GOCACHEPROG="$(gocacheprog "lint-staticcheck-{GOOS}" "$dir/staticcheck.stats.json")" \
			"$GOBIN/staticcheck" ./... >"$dir/staticcheck.out" 2>"$dir/staticcheck.err") || status=$?
		;;
	esac
	# Both exit 1 when they report findings; anything else is a failure of the run.
	[ "$status" -le 1 ] || fail "$linter on machine $run exited $status: $(cat "$dir/$linter.err")"
	echo "$status" >"$dir/$linter.status"
}
figure() { # stats-file field.path
	python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = (v or {}).get(k)
print(v or 0)' "$1" "$2"
}

checked=0
for linter in $LINTERS; do
	case "$linter" in
	golangci-lint) stats=golangci.stats.json ;;
	staticcheck) stats=staticcheck.stats.json ;;
	esac
	echo "== $linter, machine A (empty caches)"
	lint a "$linter"
	echo "== $linter, machine B (empty local caches again, the same server)"
	lint b "$linter"
	findings="$(wc -l <"$work/a/$linter.out")"
	[ "$findings" -gt 0 ] || fail "$linter found nothing on machine A: $(cat "$work/a/$linter.err")"
	grep -q cgoadd "$work/a/$linter.out" || fail "$linter reported nothing in the cgo package"
	cmp -s "$work/a/$linter.out" "$work/b/$linter.out" ||
		fail "$linter's findings differ: $(diff "$work/a/$linter.out" "$work/b/$linter.out")"
	cmp -s "$work/a/$linter.status" "$work/b/$linter.status" || fail "$linter's exit status differs"
	a_uploads="$(figure "$work/a/$stats" remote.uploads)"
	b_remote="$(figure "$work/b/$stats" remote.hits)"
	b_prefetched="$(figure "$work/b/$stats" remote.prefetch.used)"
	b_uploads="$(figure "$work/b/$stats" remote.uploads)"
	printf '%s: %s finding lines, the same on both machines\n' "$linter" "$findings"
	printf '  A: %s gets, %s misses, %s uploaded, %ss\n' "$(figure "$work/a/$stats" gets)" \
		"$(figure "$work/a/$stats" misses)" "$a_uploads" "$(figure "$work/a/$stats" run_seconds)"
	printf '  B: %s gets, %s hits (%s prefetched and used, %s remote hits), %s misses, %s uploaded, %ss\n' \
		"$(figure "$work/b/$stats" gets)" "$(figure "$work/b/$stats" hits)" "$b_prefetched" "$b_remote" \
		"$(figure "$work/b/$stats" misses)" "$b_uploads" "$(figure "$work/b/$stats" run_seconds)"
	[ "$a_uploads" -gt 0 ] || fail "$linter's cache uploaded nothing on machine A"
	[ $((b_remote + b_prefetched)) -gt 0 ] || fail "$linter's cache on machine B got nothing from the server"
	[ "$b_uploads" -eq 0 ] || fail "$linter's cache on machine B uploaded $b_uploads entries: it recomputed them"
	checked=$((checked + 1))
done
for linter in $LINTERS; do
	echo "== $linter's findings"
	cat "$work/a/$linter.out"
done
echo "$checked passed, 0 failed"
