#!/usr/bin/env bash
# Three grokforge nodes on one machine, as one cluster: one Redis (events, discovery), one
# PostgreSQL database (jobs, models) and one shared artifacts directory. Prints the nodes' URLs
# and the admin token, and stops every node on Ctrl-C.
#
#   examples/cluster/run.sh [WORK_DIR]        # default: ./cluster-data
#
# Redis and PostgreSQL are started when they are not answering on 127.0.0.1:6379 / :5432
# (installed with apt when missing). Override with REDIS_URL and DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(realpath -m "${1:-./cluster-data}")
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/grokforge_cluster}
ports=(${PORTS:-8081 8082 8083})

if ! command -v redis-server >/dev/null || ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql
fi
if ! redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG; then
  echo "cluster: starting redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "cluster: starting postgresql" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
fi
for _ in $(seq 1 60); do
  redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG && pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 0.5
done
database=${database_url##*/}
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $database"

eval "$(scripts/libtorch-env.sh)"
cargo build --bin grokforge
binary=${CARGO_TARGET_DIR:-target}/debug/grokforge

# The cluster's secrets, made once and kept in the work dir (mode 0600): the HMAC key that
# signs every event between nodes, and an admin token every node accepts.
mkdir -p "$work"
umask 077
[[ -f "$work/cluster-secret" ]] || head -c 32 /dev/urandom | base64 | tr -d '\n' >"$work/cluster-secret"
[[ -f "$work/admin-token" ]] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$work/admin-token"
cat >"$work/cluster.toml" <<TOML
[broker]
url = "$redis_url"
channel = "grokforge:example"
cluster_secret = "$(cat "$work/cluster-secret")"

[database]
url = "$database_url"

[storage]
artifacts_dir = "$work/artifacts"

[discovery]
heartbeat_interval_ms = 1000
ttl_ms = 5000

[[gateway.tokens]]
token = "$(cat "$work/admin-token")"
role = "admin"
TOML

pids=()
stop() {
  [[ ${#pids[@]} -gt 0 ]] || return 0
  echo "cluster: stopping ${#pids[@]} nodes" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

for i in "${!ports[@]}"; do
  port=${ports[$i]}
  GROKFORGE__NODE__NAME="node-$((i + 1))" \
    "$binary" serve --config "$work/cluster.toml" --bind "127.0.0.1:$port" \
    --data-dir "$work/node-$((i + 1))" >"$work/node-$((i + 1)).log" 2>&1 &
  pids+=($!)
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo "node: http://127.0.0.1:$port"
done
echo "admin token: $(cat "$work/admin-token")"
echo "logs: $work/node-*.log — Ctrl-C stops the cluster"
wait "${pids[@]}"
