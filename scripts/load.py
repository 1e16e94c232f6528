#!/usr/bin/env python3
"""Load checks of one node (RELIABILITY.md), against a real `grokforge serve` on port 0.

  scripts/load.py jobs [--jobs 20]        idle memory, then N jobs back to back, then memory again
  scripts/load.py replay [--events N]     a job log of N events (default 1,000,000) replayed to a
                                          `since=0` WebSocket client: complete, in order, and the
                                          node's memory meanwhile
  scripts/load.py idle [--connections N]  N idle WebSocket connections (default 10,000): the node's
                                          memory per connection, and REST latency with and without
  scripts/load.py rest [--clients N]      N concurrent REST clients (default 500) for --seconds
                                          (default 60) over a mix of routes: errors, p50, p99

GROKFORGE_BIN names the binary (default: the debug build under $CARGO_TARGET_DIR). Prints one
JSON object of figures. `replay` needs the `websockets` package; the script installs it into
~/.cache/grokforge/load-venv and re-runs itself there when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

TOKEN = "load-admin-token"
ROOT = Path(__file__).resolve().parent.parent


def binary() -> str:
    if os.environ.get("GROKFORGE_BIN"):
        return os.environ["GROKFORGE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "grokforge")


class Node:
    def __init__(self, data: Path):
        self.data = data
        config = data / "load.toml"
        config.write_text(f'[gateway]\nws_max_connections = 20000\n'
                          f'[[gateway.tokens]]\ntoken = "{TOKEN}"\nrole = "admin"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("GROKFORGE")}
        env["RUST_LOG"] = "warn"
        self.process = subprocess.Popen(
            [binary(), "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data), "--config", str(config)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        for line in self.process.stdout:
            if line.startswith("listening on "):
                self.base = line.split()[-1]
                break
        else:
            raise SystemExit("the node did not start")
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()

    def rss_mib(self) -> float:
        return status_kib(self.process.pid, "VmRSS") / 1024

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def wait_job(self, job_id: str, timeout: float = 1200) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/jobs/{job_id}")
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        raise SystemExit(f"job {job_id} did not end")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def settle(node: Node, seconds: float = 5.0) -> float:
    time.sleep(seconds)
    return node.rss_mib()


def jobs(count: int) -> dict:
    # The paper's task and model size, a few hundred steps each: every job allocates and frees
    # the step buffers the heap policy keeps.
    spec = {"dataset": "mod-mul:97", "steps": 300, "eval_every": 100, "checkpoint_every": 100,
            "variants": 1, "grokfast": "ema", "batch_size": 512}
    with tempfile.TemporaryDirectory() as data:
        node = Node(Path(data))
        idle = settle(node)
        peak = idle
        started = time.monotonic()
        for index in range(count):
            job = node.call("POST", "/phases/cognate/start", {**spec, "seed": index})
            ended = node.wait_job(job["id"])
            assert ended["status"] == "completed", ended
            peak = max(peak, status_kib(node.process.pid, "VmHWM") / 1024)
        elapsed = time.monotonic() - started
        after = settle(node)
        node.stop()
    return {"jobs": count, "seconds": round(elapsed, 1), "idle_rss_mib": round(idle, 1),
            "peak_rss_mib": round(peak, 1), "rss_after_mib": round(after, 1),
            "above_idle_mib": round(after - idle, 1)}


def write_log(data: Path, events: int) -> None:
    """Replaces the job's event log with `events` progress events, as a long job leaves it."""
    db = sqlite3.connect(data / "grokforge.sqlite3")
    # The node ran one job: its first progress event is the template.
    row = db.execute("SELECT job_id, envelope, created_at FROM job_events "
                     "WHERE json_extract(envelope, '$.event.type') = 'training_progress' "
                     "LIMIT 1").fetchone()
    raw_id, template, created_at = row
    template = json.loads(template)
    template["event"]["type"] = "training_progress"
    db.execute("DELETE FROM job_events WHERE job_id = ?", (raw_id,))
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO job_events (job_id, seq, envelope, created_at) "
        "SELECT ?, i, json_set(?, '$.seq', i, '$.event.data.step', i), ? FROM n",
        (events, raw_id, json.dumps(template), created_at))
    db.execute("UPDATE jobs SET last_event_seq = ? WHERE id = ?", (events, raw_id))
    db.commit()
    db.close()


async def watch(base: str, job_id: str, events: int, node: Node) -> dict:
    import websockets

    url = base.replace("http://", "ws://", 1) + f"/ws?token={TOKEN}"
    samples: list[float] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(node.rss_mib())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    started = time.monotonic()
    received, expected, out_of_order = 0, 1, 0
    async with websockets.connect(url, max_size=None, max_queue=1024) as socket:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "connection_established", hello
        await socket.send(json.dumps({"type": "subscribe", "topic": f"job:{job_id}", "since": 0}))
        confirmed = json.loads(await socket.recv())
        assert confirmed["type"] == "subscription_confirmed", confirmed
        while received < events:
            frame = json.loads(await asyncio.wait_for(socket.recv(), 60))
            if frame.get("seq") is None:
                continue
            if frame["seq"] != expected:
                out_of_order += 1
            expected = frame["seq"] + 1
            received += 1
    elapsed = time.monotonic() - started
    stop.set()
    return {"confirmed_replayed": confirmed.get("replayed"), "received": received,
            "out_of_order": out_of_order, "seconds": round(elapsed, 1),
            "events_per_second": round(received / elapsed),
            "rss_during_max_mib": round(max(samples), 1)}


def replay(events: int) -> dict:
    with tempfile.TemporaryDirectory() as data:
        data = Path(data)
        node = Node(data)
        job = node.call("POST", "/phases/cognate/start",
                        {"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                         "d_ff": 32, "batch_size": 16, "steps": 20, "variants": 1})
        node.wait_job(job["id"])
        node.stop()
        started = time.monotonic()
        write_log(data, events)
        written = time.monotonic() - started
        node = Node(data)
        before = settle(node, 2)
        figures = asyncio.run(watch(node.base, job["id"], events, node))
        node.stop()
    return {"events": events, "log_written_seconds": round(written, 1),
            "rss_before_mib": round(before, 1), **figures,
            "rss_growth_mib": round(figures["rss_during_max_mib"] - before, 1)}


def latency_ms(node: Node, path: str, count: int = 200) -> dict:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        node.call("GET", path)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50": round(samples[len(samples) // 2], 2),
            "p99": round(samples[int(len(samples) * 0.99)], 2)}


async def open_idle(base: str, count: int) -> list:
    import websockets

    url = base.replace("http://", "ws://", 1) + f"/ws?token={TOKEN}"
    sockets = []
    for start in range(0, count, 200):
        batch = await asyncio.gather(*(websockets.connect(url, ping_interval=None)
                                       for _ in range(min(200, count - start))))
        for socket in batch:
            hello = json.loads(await socket.recv())
            assert hello["type"] == "connection_established", hello
        sockets.extend(batch)
    return sockets


def idle(count: int) -> dict:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1024)), hard))
    with tempfile.TemporaryDirectory() as data:
        node = Node(Path(data))
        # A first batch warms up what every session shares (runtime, hub, buffers' size classes).
        async def run():
            warm = await open_idle(node.base, 200)
            before = settle(node, 3)
            quiet = latency_ms(node, "/jobs")
            sockets = await open_idle(node.base, count)
            after = settle(node, 5)
            loaded = latency_ms(node, "/jobs")
            alive = sum(1 for s in sockets if s.state.name == "OPEN")
            for socket in sockets + warm:
                await socket.close()
            return before, after, quiet, loaded, alive
        before, after, quiet, loaded, alive = asyncio.run(run())
        node.stop()
    return {"connections": count, "open_at_the_end": alive, "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1),
            "kib_per_connection": round((after - before) * 1024 / count, 2),
            "get_jobs_ms_without": quiet, "get_jobs_ms_with": loaded}


def rest(clients: int, seconds: float) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory() as data:
        node = Node(Path(data))
        job = node.call("POST", "/phases/cognate/start",
                        {"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2,
                         "d_ff": 32, "batch_size": 16, "steps": 20, "variants": 2})
        node.wait_job(job["id"])
        routes = ["/health", "/jobs", f"/jobs/{job['id']}", "/models", "/phases", "/alerts",
                  "/datasets", f"/jobs/{job['id']}/events?limit=100", "/cluster/nodes", "/metrics"]
        deadline = time.monotonic() + seconds

        def client(index: int):
            latencies, errors = [], {}
            turn = index
            while time.monotonic() < deadline:
                path = routes[turn % len(routes)]
                turn += 1
                started = time.perf_counter()
                try:
                    request = urllib.request.Request(node.base + path)
                    request.add_header("Authorization", f"Bearer {TOKEN}")
                    with urllib.request.urlopen(request, timeout=30) as response:
                        response.read()
                except urllib.error.HTTPError as error:
                    kind = f"{error.code} {path.split('?')[0]}"
                    errors[kind] = errors.get(kind, 0) + 1
                except Exception as error:  # noqa: BLE001 - every failure is an error to count
                    kind = type(error).__name__ + ": " + str(getattr(error, "reason", error))[:60]
                    errors[kind] = errors.get(kind, 0) + 1
                latencies.append((time.perf_counter() - started) * 1000)
            return latencies, errors

        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(client, range(clients)))
        node.stop()
    latencies = sorted(l for got, _ in results for l in got)
    kinds: dict[str, int] = {}
    for _, errors in results:
        for kind, count in errors.items():
            kinds[kind] = kinds.get(kind, 0) + count
    return {"clients": clients, "seconds": seconds, "requests": len(latencies),
            "errors": sum(kinds.values()), "error_kinds": kinds,
            "requests_per_second": round(len(latencies) / seconds),
            "p50_ms": round(latencies[len(latencies) // 2], 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1)}


def ensure_websockets():
    try:
        import websockets  # noqa: F401
        return
    except ImportError:
        pass
    venv = Path.home() / ".cache" / "grokforge" / "load-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "websockets==15.0.1"])
    os.execv(str(python), [str(python), *sys.argv])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("jobs").add_argument("--jobs", type=int, default=20)
    sub.add_parser("replay").add_argument("--events", type=int, default=1_000_000)
    sub.add_parser("idle").add_argument("--connections", type=int, default=10_000)
    rest_args = sub.add_parser("rest")
    rest_args.add_argument("--clients", type=int, default=500)
    rest_args.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if args.check == "replay":
        ensure_websockets()
        print(json.dumps(replay(args.events)))
    elif args.check == "idle":
        ensure_websockets()
        print(json.dumps(idle(args.connections)))
    elif args.check == "rest":
        print(json.dumps(rest(args.clients, args.seconds)))
    else:
        print(json.dumps(jobs(args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
