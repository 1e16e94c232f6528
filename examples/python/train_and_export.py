#!/usr/bin/env python3
"""Train on a grokforge node from Python: start a `cognate` job, follow it live over the
WebSocket, export the winning model, and — when PyTorch is importable — load its
`model.safetensors` into the reference PyTorch model and ask it a few questions.

    make run                                      # a node on http://127.0.0.1:8080, data in ./data
    python3 examples/python/train_and_export.py --data-dir ./data --steps 2000

The token is `--token`, else `$GROKFORGE_TOKEN`, else `<data-dir>/admin-token`. Any other
training setting goes in as `--set NAME=VALUE` (VALUE as JSON: `--set lr=0.003`); the node's
`GET /openapi.json` (`StartJobRequest`) lists them all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Runs from a checkout without installing the client (`pip install clients/python` also works).
sys.path.insert(0, str(REPO / "clients" / "python"))

from grokforge_client import Client, GrokforgeError  # noqa: E402

REFERENCE_MODEL = REPO / "training-core" / "benches" / "reference_model.py"


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
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict:
    settings = {"dataset": args.dataset, "steps": args.steps, "variants": args.variants}
    for item in args.settings:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except ValueError:
            settings[name] = value
    return settings


def follow(client: Client, job_id: str, timeout: float) -> None:
    """Prints the job's progress, about once a second per variant, until it ends."""
    printed: dict[int, float] = {}
    for frame in client.watch(job_id, deadline=time.monotonic() + timeout):
        kind, data = frame["type"], frame.get("data", {})
        if kind == "training_started":
            print(f"attempt {data.get('attempt')} started")
        elif kind == "training_progress":
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


def load_reference_model():
    """The reference PyTorch model module, or None when torch is not importable."""
    if importlib.util.find_spec("torch") is None:
        return None
    spec = importlib.util.spec_from_file_location("reference_model", REFERENCE_MODEL)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:  # torch present but broken
        print(f"PyTorch is installed but does not import ({error}); skipping the check")
        return None
    return module


def answer(operation: str, a: int, b: int, p: int) -> int | None:
    if operation == "add":
        return (a + b) % p
    if operation == "sub":
        return (a - b) % p
    if operation == "mul":
        return (a * b) % p
    if operation == "div":
        return None if b == 0 else (a * pow(b, p - 2, p)) % p
    if operation == "poly":
        return (a * a + a * b + b * b) % p
    return None


def ask(reference, weights: pathlib.Path, dataset: str) -> None:
    import torch

    model = reference.load_safetensors(str(weights))
    print(f"loaded {weights} into the reference PyTorch model: {model.config}")
    if not dataset.startswith("mod-") or ":" not in dataset:
        return
    operation, p = dataset[4:].split(":")
    p = int(p)
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "poly": "∘"}.get(operation, "?")
    questions = [(a, b) for a, b in [(3, 5), (7, 11), (12, 1), (2, 9), (p - 1, p - 2)] if a < p and b < p and b > 0]
    # `[a, op, b, =]`: token p is the operator, p + 1 the equals sign; the answer is read at
    # the last position.
    tokens = torch.tensor([[a, p, b, p + 1] for a, b in questions], dtype=torch.long)
    with torch.no_grad():
        predicted = model(tokens)[:, -1, :p].argmax(dim=-1).tolist()
    right = 0
    for (a, b), guess in zip(questions, predicted):
        truth = answer(operation, a, b, p)
        right += guess == truth
        print(f"  {a} {symbol} {b} mod {p} = {guess}   (right answer: {truth})")
    print(f"  {right} of {len(questions)} right")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    client = Client(args.url, args.token, data_dir=None if args.token or os.environ.get("GROKFORGE_TOKEN") else args.data_dir)
    try:
        job = client.start_phase(args.phase, **settings_of(args))
    except GrokforgeError as error:
        where = f" (field `{error.field}`)" if error.field else ""
        print(f"the node refused the job{where}: {error.detail}", file=sys.stderr)
        return 2
    print(f"queued job {job['id']} ({args.phase})")
    follow(client, job["id"], args.timeout)
    record = client.job(job["id"])
    if record["status"] != "completed":
        print(f"job ended {record['status']}: {record.get('error')}", file=sys.stderr)
        return 1

    models = client.models(job_id=job["id"])
    winner = next((m for m in models if m["winner"]), models[0])
    print(f"winner: {winner['name']} v{winner['version']}  sha256 {winner['sha256']}")
    export = client.export([winner["id"]], format="all")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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

    reference = load_reference_model()
    if reference is None:
        print("torch is not importable here; skipping the PyTorch check")
        return 0
    ask(reference, weights, record["spec"].get("dataset") or args.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
