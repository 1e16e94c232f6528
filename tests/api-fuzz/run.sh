#!/usr/bin/env bash
# API fuzzing: schemathesis against a real node on port 0, with a token of each role.
#
# Schemathesis (4.x, into a venv under ${XDG_CACHE_HOME:-~/.cache}/grokforge/api-fuzz-venv,
# once) reads the node's own /openapi.json and runs every phase (examples, coverage, fuzzing,
# stateful) with every check: as admin for most of the time budget, then as user and as read,
# where the operations above the role must answer 403. tests/api-fuzz/schemathesis.toml says
# which answers are by design (the 501 of a phase without a recipe).
#
# The node is $GROKFORGE_BIN (default: the CI build, ~/.cache/grokforge/ci-target/debug/grokforge),
# run with a fresh data directory, niced, and with its address space capped: what the fuzzer
# makes it train stays small (the start body's ranges bound it) and cannot take the machine's
# memory. Knobs: GROKFORGE_FUZZ_SECONDS (total budget, default 180), GROKFORGE_FUZZ_SEED
# (default fixed, so CI runs repeat), GROKFORGE_FUZZ_REPORT (where the JUnit reports and the
# node's log go; default target/test-artifacts/api-fuzz). Extra arguments go to every
# `schemathesis run` (`--include-operation-id list_jobs`, `-n 20`).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/grokforge
venv=$cache/api-fuzz-venv
binary=${GROKFORGE_BIN:-$cache/ci-target/debug/grokforge}
budget=${GROKFORGE_FUZZ_SECONDS:-180}
seed=${GROKFORGE_FUZZ_SEED:-20261201}
report=${GROKFORGE_FUZZ_REPORT:-$repo/target/test-artifacts/api-fuzz}

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q 'version 4\.'; then
  echo "api-fuzz: installing schemathesis 4 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4.32,<5'
fi
if [ ! -x "$binary" ]; then
  echo "api-fuzz: no grokforge binary at $binary (build it, or set GROKFORGE_BIN)" >&2
  exit 1
fi

data=$(mktemp -d "${TMPDIR:-/tmp}/grokforge-fuzz.XXXXXX")
mkdir -p "$report"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

admin_token="fuzz-admin-$RANDOM$RANDOM"
user_token="fuzz-user-$RANDOM$RANDOM"
read_token="fuzz-read-$RANDOM$RANDOM"
cat >"$data/fuzz.toml" <<TOML
[[gateway.tokens]]
token = "$admin_token"
role = "admin"
[[gateway.tokens]]
token = "$user_token"
role = "user"
[[gateway.tokens]]
token = "$read_token"
role = "read"
[training]
# A job the fuzzer starts that fails is not retried: each attempt would train again.
max_attempts = 1
TOML

# A clean environment for the node, as the Rust tests give it (LibTorch comes from the rpath).
(
  ulimit -v $((16 * 1024 * 1024))
  exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG="${RUST_LOG:-warn}" \
    nice -n 10 "$binary" serve --bind 127.0.0.1:0 --data-dir "$data/node" --config "$data/fuzz.toml"
) >"$data/stdout" 2>"$report/node.log" &
node_pid=$!

url=""
for _ in $(seq 600); do
  url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$data/stdout" | head -n 1)
  [ -n "$url" ] && break
  kill -0 "$node_pid" 2>/dev/null || { echo "api-fuzz: the node exited" >&2; cat "$report/node.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "api-fuzz: the node printed no address in 60 s" >&2; exit 1; }
echo "api-fuzz: node at $url (pid $node_pid), budget ${budget}s, seed $seed" >&2

"$venv/bin/python" - "$url/openapi.json" "$read_token" >"$data/openapi.json" <<'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {sys.argv[2]}"})
sys.stdout.write(urllib.request.urlopen(request, timeout=30).read().decode())
PY

# Admin gets most of the budget: it can call everything. The other two roles get the rest
# between them; their runs mostly check that what is above their role is refused.
admin_seconds=$((budget * 2 / 3))
role_seconds=$(((budget - admin_seconds) / 2))
status=0
run() {
  local role=$1 token=$2 seconds=$3
  shift 3
  echo "api-fuzz: as $role for ${seconds}s" >&2
  # From the temp dir: schemathesis keeps a cache in its working directory. One worker: with
  # more, hypothesis's source inspection can fail under CPython 3.11's threads ("AST
  # constructor recursion depth mismatch"), and the node has two cores anyway.
  (cd "$data" && "$venv/bin/schemathesis" --config-file "$repo/tests/api-fuzz/schemathesis.toml" run \
    "$data/openapi.json" --url "$url" \
    -H "Authorization: Bearer $token" \
    --checks all --phases examples,coverage,fuzzing,stateful \
    --max-time "$seconds" --seed "$seed" --workers 1 \
    --report junit --report-junit-path "$report/$role.xml" \
    "$@") || status=$?
  kill -0 "$node_pid" 2>/dev/null || { echo "api-fuzz: the node died; see $report/node.log" >&2; status=1; }
}
run admin "$admin_token" "$admin_seconds" "$@"
run user "$user_token" "$role_seconds" "$@"
run read "$read_token" "$role_seconds" "$@"
exit $status
