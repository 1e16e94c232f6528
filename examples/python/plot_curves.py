#!/usr/bin/env python3
"""Draw a job's loss and accuracy curves to a PNG, from its durable event log.

    python3 examples/python/plot_curves.py JOB_ID --data-dir ./data --out curves.png

One line per variant: training loss and validation loss (log scale) on the left, training and
validation accuracy on the right. `train_and_export.py` draws the same picture from the frames
it followed live. Needs matplotlib (`pip install matplotlib`); the token is `--token`, else
`$GROKFORGE_TOKEN`, else `<data-dir>/admin-token`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any, Iterable, Mapping

HERE = pathlib.Path(__file__).resolve().parent
# Runs from a checkout without installing the client (`pip install clients/python` also works).
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python"))

from grokforge_client import Client, GrokforgeError  # noqa: E402

#: What a `training_progress` event carries that the curves use.
Progress = Mapping[str, Any]


def draw_curves(progress: Iterable[Progress], path: str | os.PathLike, title: str = "") -> pathlib.Path:
    """Writes the curves of `progress` (the `data` of `training_progress` events, in any order,
    repeats allowed: the last report of a variant's step wins) to the PNG `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot

    by_variant: dict[int, dict[int, Progress]] = {}
    for data in progress:
        by_variant.setdefault(int(data["variant"]), {})[int(data["step"])] = data

    figure, (loss_axes, accuracy_axes) = pyplot.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (variant, points) in enumerate(sorted(by_variant.items())):
        color = colors[index % len(colors)]
        rows = [points[step] for step in sorted(points)]
        for axes, key, style, label in (
            (loss_axes, "loss", "-", "train"),
            (loss_axes, "val_loss", "--", "validation"),
            (accuracy_axes, "accuracy", "-", "train"),
            (accuracy_axes, "val_accuracy", "--", "validation"),
        ):
            steps = [row["step"] for row in rows if row.get(key) is not None]
            values = [row[key] for row in rows if row.get(key) is not None]
            if steps:
                axes.plot(steps, values, style, color=color, label=f"variant {variant} {label}")
    loss_axes.set(xlabel="step", ylabel="cross-entropy", title="loss")
    losses = [value for line in loss_axes.get_lines() for value in line.get_ydata()]
    # A log scale once the loss spans a decade: grokking's drop is orders of magnitude.
    if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
        loss_axes.set_yscale("log")
    accuracy_axes.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        if axes.get_lines():
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    pyplot.close(figure)
    return target


def progress_from_log(client: Client, job_id: str) -> list[Progress]:
    """The `training_progress` data of the job's event log (`GET /jobs/{id}/events`, which the
    client reads page by page)."""
    return [
        envelope["event"]["data"]
        for envelope in client.events(job_id)
        if envelope["event"]["type"] == "training_progress"
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job_id")
    parser.add_argument("--url", default=os.environ.get("GROKFORGE_SERVER", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=None)
    parser.add_argument("--data-dir", default="./data", help="where to find admin-token")
    parser.add_argument("--out", default="curves.png")
    args = parser.parse_args(argv)
    token_from_file = args.token is None and not os.environ.get("GROKFORGE_TOKEN")
    client = Client(args.url, args.token, data_dir=args.data_dir if token_from_file else None)
    try:
        job = client.job(args.job_id)
        progress = progress_from_log(client, args.job_id)
    except GrokforgeError as error:
        print(f"cannot read job {args.job_id}: {error.detail}", file=sys.stderr)
        return 2
    if not progress:
        print(f"job {args.job_id} ({job['status']}) has no progress yet", file=sys.stderr)
        return 1
    path = draw_curves(progress, args.out, title=f"{job['phase']} job {args.job_id} ({job['status']})")
    print(f"curves of {len(progress)} progress events: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
