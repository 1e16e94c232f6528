#!/usr/bin/env python3
"""Train on a grokforge node from Python: start a phase, follow it live over the WebSocket,
wait for it to end, export the winning model, download and unpack the package, and draw the
loss and accuracy curves to a PNG.

    make run                                      # a node on http://127.0.0.1:8080, data in ./data
    python3 examples/python/train_and_export.py --data-dir ./data --steps 2000
    scripts/torch-python.sh examples/python/load_in_pytorch.py grokforge-export/<export id>

The token is `--token`, else `$GROKFORGE_TOKEN`, else `<data-dir>/admin-token`. Any other
training setting goes in as `--set NAME=VALUE` (VALUE as JSON: `--set lr=0.003`); the node's
`GET /openapi.json` (`StartJobRequest`, or docs/API.md) lists them all. The curves need
matplotlib (`pip install matplotlib`); without it the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import zipfile
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
# Runs from a checkout without installing the client (`pip install clients/python` also works).
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python"))

from grokforge_client import Client, GrokforgeError  # noqa: E402
from plot_curves import Progress, draw_curves  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("GROKFORGE_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=None)
    parser.add_argument("--data-dir", default="./data", help="where to find admin-token")
    parser.add_argument("--phase", default="cognate")
    parser.add_argument("--dataset", default="mod-mul:97")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--variants", type=int, default=3)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", default="grokforge-export", help="directory for the package")
    parser.add_argument("--plot", default=None, help="PNG of the curves (default: OUT/curves-JOB.png)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"dataset": args.dataset, "steps": args.steps, "variants": args.variants}
    for item in args.settings:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except ValueError:
            settings[name] = value
    return settings


def follow(client: Client, job_id: str, timeout: float) -> list[Progress]:
    """Prints the job's progress, about once a second per variant, until it ends; returns every
    progress report. `watch` replays the job's log first, and reopens a dropped connection with
    `since` = the last sequence number it saw, so each event arrives once."""
    progress: list[Progress] = []
    printed: dict[int, float] = {}
    for frame in client.watch(job_id, deadline=time.monotonic() + timeout):
        kind, data = frame["type"], frame.get("data", {})
        if kind == "training_started":
            print(f"attempt {data.get('attempt')} started")
        elif kind == "training_progress":
            progress.append(data)
            variant = data["variant"]
            last = data["step"] >= data["total_steps"]
            if last or time.monotonic() - printed.get(variant, 0.0) >= 1.0:
                printed[variant] = time.monotonic()
                val = data.get("val_accuracy")
                print(
                    f"variant {variant}  step {data['step']:>6}/{data['total_steps']}  "
                    f"loss {data['loss']:.4f}  "
                    f"val acc {'—' if val is None else f'{val:.1%}'}  "
                    f"{data['steps_per_second']:.1f} steps/s",
                    flush=True,
                )
        elif kind == "training_failed":
            print(f"attempt {data.get('attempt')} failed: {data.get('error')}")
        elif kind == "training_completed":
            print(f"completed: {len(data.get('model_ids', []))} models, winner {data.get('winner')}")
        elif kind == "training_cancelled":
            print(f"cancelled at step {data.get('step')}")
    return progress


def plot(progress: list[Progress], path: pathlib.Path, title: str) -> None:
    try:
        written = draw_curves(progress, path, title=title)
    except ImportError:
        print("matplotlib is not importable here (pip install matplotlib); no curves drawn")
        return
    print(f"curves: {written}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    token_from_file = args.token is None and not os.environ.get("GROKFORGE_TOKEN")
    client = Client(args.url, args.token, data_dir=args.data_dir if token_from_file else None)
    try:
        job = client.start_phase(args.phase, **settings_of(args))
    except GrokforgeError as error:
        where = f" (field `{error.field}`)" if error.field else ""
        print(f"the node refused the job{where}: {error.detail}", file=sys.stderr)
        return 2
    print(f"queued job {job['id']} ({args.phase})")
    progress = follow(client, job["id"], args.timeout)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        plot(progress, pathlib.Path(args.plot or out / f"curves-{job['id']}.png"), f"{args.phase} job {job['id']}")
    record = client.job(job["id"])
    if record["status"] != "completed":
        print(f"job ended {record['status']}: {record.get('error')}", file=sys.stderr)
        return 1

    models = client.models(job_id=job["id"])
    winner = next((m for m in models if m["winner"]), models[0])
    print(f"winner: {winner['name']} v{winner['version']}  sha256 {winner['sha256']}")
    export = client.export([winner["id"]], format="all")
    package = client.download(export["id"], out)
    print(f"downloaded {package} ({package.stat().st_size} bytes)")
    unpacked = out / export["id"]
    with zipfile.ZipFile(package) as archive:
        archive.extractall(unpacked)
    weights = next(unpacked.rglob("model.safetensors"), None)
    if weights is None:
        print("the package has no model.safetensors", file=sys.stderr)
        return 1
    print(f"model.safetensors: {weights}")
    print(f"load it in PyTorch: scripts/torch-python.sh {HERE / 'load_in_pytorch.py'} {unpacked}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
