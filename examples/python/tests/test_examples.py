"""The Python examples against a real node: `train_and_export.py` starts a small job, follows it
and downloads the winner's package; `plot_curves.py` draws the job's curves from its log;
`load_in_pytorch.py` loads the package into the PyTorch reference model and answers.

The PyTorch part runs in the LibTorch virtualenv's python (`scripts/torch-python.sh`, or
`$GROKFORGE_TORCH_PYTHON`). Where torch does not import it is skipped, unless
`GROKFORGE_REQUIRE_TORCH=1` (CI), when it fails.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "python"
# As small as the recipe allows, on the task load_in_pytorch.py asks about: seconds on one core.
SMALL_JOB = {
    "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
    "batch_size": 16, "eval_every": 10, "threads": 1,
}
QUESTION = re.compile(r"^\s*(\d+) \*\s+(\d+) mod 97 =\s+(\d+)\s+right answer:\s+(\d+)", re.MULTILINE)


@dataclass
class Run:
    stdout: str
    out: pathlib.Path
    job_id: str


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GROKFORGE_TOKEN"}
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, **kwargs)


@pytest.fixture(scope="module")
def trained(node, tmp_path_factory) -> Run:
    out = tmp_path_factory.mktemp("export")
    result = run([
        sys.executable, str(EXAMPLES / "train_and_export.py"), "--url", node.url,
        "--data-dir", str(node.data_dir), "--dataset", "mod-mul:97", "--steps", "60",
        "--variants", "2", *[f"--set={k}={v}" for k, v in SMALL_JOB.items()],
        "--out", str(out), "--plot", str(out / "curves.png"), "--timeout", "240",
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    queued = re.search(r"queued job (\S+)", result.stdout)
    assert queued, result.stdout
    return Run(result.stdout, out, queued.group(1))


def assert_png(path: pathlib.Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width >= 600 and height >= 300, (width, height)


def test_train_and_export_follows_the_job_and_downloads_the_winner(trained: Run):
    assert "completed: 2 models" in trained.stdout, trained.stdout
    assert re.search(r"variant [01]  step +60/60", trained.stdout), trained.stdout
    assert len(list(trained.out.glob("*.zip"))) == 1, trained.stdout
    assert len(list(trained.out.rglob("model.safetensors"))) == 1, trained.stdout
    assert f"curves: {trained.out / 'curves.png'}" in trained.stdout
    assert_png(trained.out / "curves.png")


def test_plot_curves_draws_them_from_the_event_log(node, trained: Run, tmp_path):
    png = tmp_path / "from-log.png"
    result = run([
        sys.executable, str(EXAMPLES / "plot_curves.py"), trained.job_id, "--url", node.url,
        "--data-dir", str(node.data_dir), "--out", str(png),
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    assert_png(png)


def test_load_in_pytorch_refuses_a_tampered_package(trained: Run, tmp_path):
    package = next(p for p in trained.out.iterdir() if p.is_dir())
    copy = shutil.copytree(package, tmp_path / "tampered")
    weights = next(copy.rglob("model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # The check comes before torch is imported: any python will do.
    result = run([sys.executable, str(EXAMPLES / "load_in_pytorch.py"), str(copy)])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SHA-256" in result.stderr, result.stderr


@pytest.mark.parametrize("form", ["zip", "folder"])
def test_load_in_pytorch_answers_mod_97_questions(trained: Run, form: str):
    python = torch_python()
    package = next(trained.out.glob("*.zip")) if form == "zip" else next(p for p in trained.out.iterdir() if p.is_dir())
    result = run([*python, str(EXAMPLES / "load_in_pytorch.py"), str(package)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every file matches its SHA-256" in result.stdout, result.stdout
    assert "loaded" in result.stdout and "into the reference PyTorch model" in result.stdout, result.stdout
    answers = QUESTION.findall(result.stdout)
    assert len(answers) >= 5, result.stdout
    for a, b, guess, truth in answers:
        assert int(truth) == int(a) * int(b) % 97
        assert 0 <= int(guess) < 97
    right = sum(guess == truth for _, _, guess, truth in answers)
    assert f"{right} of {len(answers)} right" in result.stdout


def torch_python() -> list[str]:
    """The command that runs a python where torch imports; skips (or fails, when required) if
    there is none."""
    override = os.environ.get("GROKFORGE_TORCH_PYTHON")
    python = [override] if override else [str(REPO / "scripts" / "torch-python.sh")]
    try:
        probe = run([*python, "-c", "import torch"])
    except OSError as error:
        reason = f"cannot run {' '.join(python)}: {error}"
    else:
        if probe.returncode == 0:
            return python
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        reason = f"{' '.join(python)} cannot import torch: {last}"
    if os.environ.get("GROKFORGE_REQUIRE_TORCH") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
