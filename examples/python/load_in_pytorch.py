#!/usr/bin/env python3
"""Load an exported grokforge model into PyTorch and ask it a few `a ∘ b mod p` questions.

    scripts/torch-python.sh examples/python/load_in_pytorch.py grokforge-export/<export id>

PACKAGE is what `POST /models/export` made: the downloaded zip, the folder it unpacks to, or one
`model.safetensors`. Every `model.safetensors` in it is checked against the SHA-256 in
`export_manifest.json`, built as `training-core/benches/reference_model.py` (the same transformer
in PyTorch, names and all) from the config in the file's metadata, loaded with `strict=True`,
and asked the questions; its answers are printed next to the right ones.

Only `torch` is needed. `scripts/torch-python.sh` runs the python of the LibTorch virtualenv the
node itself links (`scripts/libtorch-env.sh`), where `import torch` works; any python with
torch ≥ 2 does as well.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import pathlib
import sys
import tempfile
import warnings
import zipfile
from types import ModuleType

HERE = pathlib.Path(__file__).resolve().parent
REFERENCE_MODEL = HERE.parents[1] / "training-core" / "benches" / "reference_model.py"
MANIFEST = "export_manifest.json"
WEIGHTS = "model.safetensors"

# The tasks' symbols; `poly` is a² + ab + b².
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "poly": "∘"}
QUESTIONS = [(3, 5), (7, 11), (12, 1), (25, 4), (42, 42), (60, 2), (96, 95)]


def reference_model() -> ModuleType:
    """`reference_model.py`, imported from its file (it lives beside the benches, not in a package)."""
    # The CPU-only torch of the LibTorch virtualenv has no numpy beside it; nothing here needs it.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    spec = importlib.util.spec_from_file_location("reference_model", REFERENCE_MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def right_answer(operation: str, a: int, b: int, p: int) -> int | None:
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


def verify(folder: pathlib.Path) -> None:
    """Checks every file the package's manifest lists against its SHA-256; raises on a mismatch."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text())
    for model in manifest.get("models", []):
        for entry in model.get("files", []):
            digest = hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(f"{entry['path']}: SHA-256 {digest}, the manifest says {entry['sha256']}")
    print(f"{MANIFEST}: every file matches its SHA-256")


def task_of(weights: pathlib.Path, default: str) -> str:
    """The `mod-OP:P` task the model was trained on, from the run config (`config.json`) beside
    it: `"data": {"kind": "algorithmic", "operation": "mul", "modulus": 97}`."""
    config_path = weights.parent / "config.json"
    if config_path.is_file():
        data = json.loads(config_path.read_text()).get("data") or {}
        if data.get("kind") == "algorithmic":
            return f"mod-{data['operation']}:{data['modulus']}"
    return default


def ask(reference: ModuleType, weights: pathlib.Path, task: str) -> tuple[int, int]:
    """Prints the model's answers next to the right ones; returns (right, asked)."""
    import torch

    model = reference.load_safetensors(str(weights))
    print(f"loaded {weights} into the reference PyTorch model: {model.config}")
    operation, _, modulus = task.removeprefix("mod-").partition(":")
    p = int(modulus)
    if operation not in SYMBOLS or model.config.vocab_size != p + 2:
        print(f"  the model was not trained on {task} (vocabulary {model.config.vocab_size}); no questions")
        return 0, 0
    questions = [(a % p, b % p) for a, b in QUESTIONS if right_answer(operation, a % p, b % p, p) is not None]
    # `[a, ∘, b, =]`: token p is the operator, p + 1 the equals sign; the answer is read at the
    # last position, among the number tokens.
    tokens = torch.tensor([[a, p, b, p + 1] for a, b in questions], dtype=torch.long)
    with torch.no_grad():
        predicted = model(tokens)[:, -1, :p].argmax(dim=-1).tolist()
    right = 0
    for (a, b), guess in zip(questions, predicted):
        truth = right_answer(operation, a, b, p)
        right += guess == truth
        mark = "right" if guess == truth else "wrong"
        print(f"  {a:>2} {SYMBOLS[operation]} {b:>2} mod {p} = {guess:>2}   right answer: {truth:>2}   {mark}")
    print(f"  {right} of {len(questions)} right")
    return right, len(questions)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=pathlib.Path, help="export zip, its unpacked folder, or a model.safetensors")
    parser.add_argument("--task", default="mod-mul:97", help="when config.json does not say (default mod-mul:97)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="grokforge-package-") as scratch:
        folder: pathlib.Path = args.package
        if args.package.is_file() and zipfile.is_zipfile(args.package):
            with zipfile.ZipFile(args.package) as archive:
                archive.extractall(scratch)
            folder = pathlib.Path(scratch)
        if folder.is_file():
            weights_files = [folder]
        else:
            try:
                verify(folder)
            except (OSError, ValueError, KeyError) as error:
                print(f"{args.package}: not a sound export package: {error}", file=sys.stderr)
                return 1
            weights_files = sorted(folder.rglob(WEIGHTS))
        if not weights_files:
            print(f"{args.package}: no {WEIGHTS} in it (export with format all or safetensors)", file=sys.stderr)
            return 1
        reference = reference_model()
        for weights in weights_files:
            ask(reference, weights, task_of(weights, args.task))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
