"""PyTorch eager baseline for the training-step throughput benchmark (`benches/throughput.rs`).

Times the step grokforge's `Trainer` takes on the Grokfast paper's task (x·y mod p, p = 97, the
`grokfast-paper` model: 2 layers, d = 128, 4 heads) in plain PyTorch eager, with the model of
`reference_model.py`, and prints one JSON line with the steps per second.

The step is grokforge's, part for part:

* data: every `[a, op, b, =]` with `a, b < p` (p² equations), a seeded 50/50 split, a fresh
  permutation of the training rows every epoch cut into batches (the last one of an epoch may be
  short), the batch gathered from the training tensor each step;
* `forward_last`: the last block and the head computed for the last position only (every
  position's keys and values), as grokforge does; cross-entropy on the answer token, the number of correct answers; loss and correct count read back together every step
  (grokforge reads them to check the loss is finite, as the paper's script calls `loss.item()`);
* subnormal floats flushed to zero (`torch.set_flush_denormal(True)`), as grokforge's trainer does;
* backward, the optional Grokfast filter (the paper's `gradfilter_ema` / `gradfilter_ma`, as
  published: the MA sums its whole window every step), `torch.optim.Adam` (lr 1e-3, betas
  (0.9, 0.98), eps 1e-8, no weight decay) and the 10-step linear warm-up as a `LambdaLR`.

Attention is `F.scaled_dot_product_attention` by default (`--attention sdpa`, the fused kernel, the
stronger baseline) or the explicit form grokforge computes (`--attention explicit`).

    python pytorch_throughput.py --batch 512 --threads 1 --steps 60 --warmup 10 [--grokfast ema]

`--batch 0` means the full training split. Run it with the python of the LibTorch virtualenv
(`scripts/libtorch-env.sh`, `scripts/torch-python.sh`): the same torch 2.9.0 grokforge links.
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

# The cpu virtualenv has no NumPy; torch warns about it on import, and nothing here needs it.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_model import GrokforgeTransformer, TransformerConfig  # noqa: E402


def modular_mul_data(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every `[a, op, b, =]` with its answer `a·b mod p`, as grokforge's `mod-mul:p`."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T
    inputs = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], dim=1)
    return inputs, a * b % p


def gradfilter_ema(model, grads, alpha: float, lamb: float):
    """The Grokfast reference's EMA filter."""
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def gradfilter_ma(model, grads, window: int, lamb: float):
    """The Grokfast reference's MA filter (mean, with warm-up): sums the window every step."""
    if grads is None:
        grads = {n: deque(maxlen=window) for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            grads[n].append(p.grad.data.detach())
            if len(grads[n]) == window:
                avg = sum(grads[n]) / len(grads[n])
                p.grad.data = p.grad.data + avg * lamb
    return grads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, required=True, help="batch size; 0 = the full train split")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--grokfast", choices=["none", "ema", "ma"], default="none")
    parser.add_argument("--alpha", type=float, default=0.98)
    parser.add_argument("--lamb", type=float, default=None, help="default 2 for EMA, 5 for MA")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--attention", choices=["sdpa", "explicit"], default="sdpa")
    parser.add_argument("--p", type=int, default=97)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # grokforge's trainer flushes subnormal floats to zero (training-core/src/denormal.rs); so
    # does this step, before the first operation starts OpenMP's threads, which inherit it.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    inputs, answers = modular_mul_data(args.p)
    rows = inputs.shape[0]
    # grokforge rounds half away from zero (9409 / 2 → 4705 training rows).
    cut = int(math.floor(rows * 0.5 + 0.5))
    split = torch.randperm(rows)
    train_x, train_y = inputs[split[:cut]].contiguous(), answers[split[:cut]].contiguous()
    train_rows = train_x.shape[0]
    batch = train_rows if args.batch <= 0 else min(args.batch, train_rows)

    config = TransformerConfig(vocab_size=args.p + 2, max_seq_len=4, d_model=128, n_layers=2, n_heads=4)
    model = GrokforgeTransformer(config, sdpa=args.attention == "sdpa").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: min(update / 10, 1.0))
    lamb = args.lamb if args.lamb is not None else (2.0 if args.grokfast == "ema" else 5.0)

    order = torch.empty(0, dtype=torch.long)
    cursor = train_rows
    grads = None

    def step() -> None:
        nonlocal order, cursor, grads
        if cursor >= train_rows:
            order = torch.randperm(train_rows)
            cursor = 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        x, y = train_x[idx], train_y[idx]
        logits = model.forward_last(x)
        loss = F.cross_entropy(logits, y)
        correct = (logits.detach().argmax(1) == y).float().sum()
        loss_value, _correct = torch.stack([loss.detach(), correct]).tolist()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"non-finite loss {loss_value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grokfast == "ema":
            grads = gradfilter_ema(model, grads, args.alpha, lamb)
        elif args.grokfast == "ma":
            grads = gradfilter_ma(model, grads, args.window, lamb)
        optimizer.step()
        scheduler.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start

    result = {
        "bench": "throughput",
        "impl": "pytorch",
        "backend": f"pytorch {torch.__version__.split('+')[0]} eager cpu ({torch.get_num_threads()} threads, {args.attention})",
        "threads": args.threads,
        "batch": batch,
        "grokfast": args.grokfast,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "seconds": seconds,
        "steps_per_sec": args.steps / seconds if seconds > 0 else None,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
