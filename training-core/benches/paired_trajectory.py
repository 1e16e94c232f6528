"""Replays grokforge training runs in PyTorch, step for step, and says how far apart they end.

grokforge (`tests/support/paired.rs`) writes a folder with `cases.json` and, per case, the
initial and final weights as safetensors (`export::to_safetensors`). `cases.json` holds the
dataset's training and validation rows, and per case the model shape, the optimizer and GrokFast
settings, the training rows of every step in order (`TrainingObserver::on_batch`) and the steps
after which grokforge evaluated. This script starts `GrokforgeTransformer`
(`reference_model.py`) from the same initial weights and takes the same steps with PyTorch's own
parts, the way the Grokfast paper's `main.py` (ironjr/grokfast) does:

* loss: `F.cross_entropy` of the answer position's logits (`forward_last`);
* `model.zero_grad(); loss.backward()`, then the paper's filter (`gradfilter_ema` /
  `gradfilter_ma`, copied below from its `grokfast.py`), then `optimizer.step()` and
  `scheduler.step()`;
* `torch.optim.Adam` (L2 weight decay, added to the gradient inside the optimizer, so after the
  filter) or `torch.optim.AdamW` (decoupled), with `LambdaLR(lambda update: min(update / warmup, 1))`;
* evaluation with `torch.no_grad()` over the whole validation split, in chunks.

Every case runs in float32 (what grokforge computes in) and float64. float64 stands for the exact
computation: how far PyTorch's own float32 run lands from it is the rounding noise of that
trajectory, and grokforge is judged against that noise, not against an absolute number (see
`tests/pytorch_trajectory.rs`).

A case may also list `controls`: deliberate deviations run in float32 only (AdamW where grokforge
used Adam, MA filtering from the first step, the filter seeing Adam's L2 term, the warm-up one
step late). Each must land far
outside the noise, which shows the comparison can see such a difference.

    python paired_trajectory.py DIR [--dtypes float32,float64] [--threads N]

prints one JSON object: per case and run, the per-step losses, accuracies and learning rates,
the evaluations, and the distance of the final weights to grokforge's and to the float64 run's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections import deque

# The cpu virtualenv has no numpy, which nothing here needs.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_model import GrokforgeTransformer, TransformerConfig, read_safetensors  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# The paper's filters, as published in ironjr/grokfast `grokfast.py` (only `trigger` is left out,
# which main.py sets for its two-stage runs alone).
def gradfilter_ma(m, grads=None, window_size=100, lamb=5.0, filter_type="mean", warmup=True):
    if grads is None:
        grads = {n: deque(maxlen=window_size) for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}

    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n].append(p.grad.data.detach())

            # Modify the gradients.
            if not warmup or len(grads[n]) == window_size:
                if filter_type == "mean":
                    avg = sum(grads[n]) / len(grads[n])
                elif filter_type == "sum":
                    avg = sum(grads[n])
                else:
                    raise ValueError(f"Unrecognized filter_type {filter_type}")
                p.grad.data = p.grad.data + avg * lamb

    return grads


def gradfilter_ema(m, grads=None, alpha=0.98, lamb=2.0):
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}

    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb

    return grads


def load(folder: str, name: str, config: TransformerConfig, dtype: torch.dtype) -> GrokforgeTransformer:
    tensors, _ = read_safetensors(os.path.join(folder, name))
    model = GrokforgeTransformer(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(dtype)


def distance(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict:
    """Max absolute difference, and the L2 norm of the difference over the L2 norm of `theirs`,
    over all parameters together; and the parameter with the largest relative difference."""
    diff_sq = ref_sq = 0.0
    max_abs = 0.0
    worst, worst_rel = None, -1.0
    for name in sorted(theirs):
        a = ours[name].detach().double()
        b = theirs[name].detach().double()
        d = (a - b).abs()
        diff_sq += float((d * d).sum())
        ref_sq += float((b * b).sum())
        max_abs = max(max_abs, float(d.max()))
        rel = float(d.norm() / b.norm().clamp_min(1e-30))
        if rel > worst_rel:
            worst, worst_rel = name, rel
    return {
        "max_abs": max_abs,
        "rel_l2": math.sqrt(diff_sq) / max(math.sqrt(ref_sq), 1e-30),
        "worst_param": worst,
        "worst_param_rel_l2": worst_rel,
    }


def evaluate(model, inputs, targets, chunk: int) -> dict:
    loss_sum = 0.0
    correct = 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], chunk):
            x, y = inputs[start : start + chunk], targets[start : start + chunk]
            logits = model.forward_last(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    n = inputs.shape[0]
    return {"val_loss": loss_sum / n, "val_accuracy": correct / n}


def run(case: dict, data: dict, folder: str, dtype: torch.dtype, control: dict | None) -> dict:
    config = TransformerConfig(**{k: case["model"][k] for k in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads")}, d_ff=case["model"].get("d_ff"))
    model = load(folder, case["init"], config, dtype)
    model.train()
    opt = dict(case["optimizer"])
    filt = dict(case["grokfast"])
    control = control or {}
    if "optimizer_kind" in control:
        opt["kind"] = control["optimizer_kind"]
    if "ma_warmup" in control:
        filt["warmup"] = control["ma_warmup"]
    warmup_shift = int(control.get("warmup_shift", 0))
    # Adam's L2 term added to the gradient before the filter instead of inside the optimizer.
    decay_before_filter = opt["weight_decay"] if control.get("filter_sees_weight_decay") else 0.0

    seq = data["seq_len"]
    train_x = torch.tensor(data["train_inputs"], dtype=torch.long).view(-1, seq)
    train_y = torch.tensor(data["train_targets"], dtype=torch.long)
    valid_x = torch.tensor(data["valid_inputs"], dtype=torch.long).view(-1, seq)
    valid_y = torch.tensor(data["valid_targets"], dtype=torch.long)

    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt["kind"]]
    optimizer = optimizer_class(
        model.parameters(),
        lr=opt["lr"],
        betas=(opt["beta1"], opt["beta2"]),
        eps=opt["epsilon"],
        weight_decay=opt["weight_decay"] - decay_before_filter,
    )
    warmup = opt["warmup_steps"]
    if warmup > 0:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: min((update + warmup_shift) / warmup, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1.0)

    eval_at = set(case["eval_at"])
    losses, accuracies, lrs, evals = [], [], [], []
    grads = None
    started = time.perf_counter()
    for step, rows in enumerate(case["batches"], start=1):
        index = torch.tensor(rows, dtype=torch.long)
        x, y = train_x[index], train_y[index]
        logits = model.forward_last(x)
        loss = F.cross_entropy(logits, y)
        losses.append(loss.item())
        accuracies.append(float((logits.detach().argmax(1) == y).float().mean()))

        model.zero_grad()
        loss.backward()
        if decay_before_filter:
            with torch.no_grad():
                for p in model.parameters():
                    p.grad.add_(p, alpha=decay_before_filter)
        if filt["kind"] == "ma":
            grads = gradfilter_ma(
                model, grads=grads, window_size=filt["window"], lamb=filt["lamb"], filter_type=filt["reduction"], warmup=filt["warmup"]
            )
        elif filt["kind"] == "ema":
            grads = gradfilter_ema(model, grads=grads, alpha=filt["alpha"], lamb=filt["lamb"])
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

        if step in eval_at:
            model.eval()
            record = evaluate(model, valid_x, valid_y, case["eval_batch_size"])
            model.train()
            evals.append({"step": step, **record})
            if case.get("log_every_eval"):
                print(f"  torch {dtype} step {step}: loss {losses[-1]:.4f} val acc {record['val_accuracy']:.3f}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    return {
        "losses": losses,
        "accuracies": accuracies,
        "lrs": lrs,
        "evals": evals,
        "seconds": elapsed,
        "params": {n: p.detach() for n, p in model.named_parameters()},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv[1:])
    torch.set_num_threads(args.threads)
    # grokforge computes with subnormals flushed to zero (training-core/src/denormal.rs).
    torch.set_flush_denormal(True)

    with open(os.path.join(args.folder, "cases.json")) as file:
        spec = json.load(file)
    data = spec["data"]
    dtypes = [d for d in args.dtypes.split(",") if d]
    out = {"torch": torch.__version__, "threads": args.threads, "cases": []}
    for case in spec["cases"]:
        config = TransformerConfig(**{k: case["model"][k] for k in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads")}, d_ff=case["model"].get("d_ff"))
        ours = {n: p for n, p in load(args.folder, case["final"], config, torch.float64).named_parameters()}
        runs = {dtype: run(case, data, args.folder, DTYPES[dtype], None) for dtype in dtypes}
        exact = runs["float64"]["params"] if "float64" in runs else None
        result = {"name": case["name"], "runs": {}}
        for dtype, record in runs.items():
            params = record.pop("params")
            record["grokforge_vs_this"] = distance(ours, params)
            if exact is not None and dtype != "float64":
                record["this_vs_float64"] = distance(params, exact)
            result["runs"][dtype] = record
        result["controls"] = {}
        for control in case.get("controls", []):
            record = run(case, data, args.folder, torch.float32, control["change"])
            params = record.pop("params")
            record["grokforge_vs_this"] = distance(ours, params)
            if exact is not None:
                record["this_vs_float64"] = distance(params, exact)
            result["controls"][control["name"]] = record
        out["cases"].append(result)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
