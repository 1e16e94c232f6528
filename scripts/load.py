#!/usr/bin/env python3
"""Load checks of one node (RELIABILITY.md), against a real `grokforge serve` on port 0.

  scripts/load.py jobs [--jobs 20]        idle memory, then N jobs back to back, then memory again
  scripts/load.py replay [--events N]     a job log of N events (default 1,000,000) replayed to a
                                          `since=0` WebSocket client: complete, in order, and the
                                          node's memory meanwhile

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
        config.write_text(f'[[gateway.tokens]]\ntoken = "{TOKEN}"\nrole = "admin"\n')
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
    args = parser.parse_args()
    if args.check == "replay":
        ensure_websockets()
        print(json.dumps(replay(args.events)))
    else:
        print(json.dumps(jobs(args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
