"""Point-E on the Pocket World: every kind in two colours, text → synthetic view → cloud → solid, measured.

For each prompt, ``generate_point_e`` runs the whole pipeline with the shipped weights (one seed) and writes its
result under ``--out``; the row holds its ``metrics.json`` figures:

- the cloud (``pipeline.cloud_fidelity``): ``chamfer`` to the true object's dense surface cloud, ``chamfer_ratio``
  against the nearest other kind's cloud (the issue's bar: ≤ 0.5), ``point_colour_ok`` (the nearest catalogue
  colour of the median colour of the points on the parts the prompt colours; one per cube for the cube stack);
- the solid: the judge's ``kind_acc`` / ``colour_acc`` from 8 novel views and ``silhouette_iou`` with the truth;
- ``seconds``: all stages (synthetic view, base, upsampler, solid), without the judging and the files.

Beside each row, ``truth_chamfer_ratio`` is the same ratio for a true cloud of as many points (another sample of
the true surface): the best a perfect model could score, since a cloud of 512 points is itself a sparse sample.
The summary line gives the shares and means over the prompts, and the training minutes from ``point_e.json``.

    python benchmarks/point_e.py [--prompts ...] [--seed 0] [--out outputs/bench_point_e] [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from text3d_edu import toyworld
from text3d_edu.point_e.pipeline import cloud_fidelity, generate_point_e
from text3d_edu.point_e.train import STATS_FILE
from text3d_edu.priors import load_clip, load_diffusion
from text3d_edu.priors.pocket_clip import WEIGHTS_DIR
from text3d_edu.world_render import surface_points

# every kind in two colours (26 prompts); the second colour list shifts the palette so no kind repeats a colour
FIRST = ["red", "blue", "yellow", "white", "green", "purple", "orange", "pink", "black", "brown", "yellow", "green",
         "red"]
SECOND = ["blue", "red", "orange", "black", "brown", "white", "yellow", "red", "blue", "white", "pink", "purple",
          "yellow"]


def prompts() -> list[str]:
    """'a red mug', 'a blue mug', …: each kind of ``toyworld.KINDS`` with its two colours (a cube stack's small
    cube in the colour, on a large cube of another)."""
    out = []
    for kind, first, second in zip(toyworld.KINDS, FIRST, SECOND):
        for colour in (first, second):
            if kind == "cube stack":
                other = "blue" if colour != "blue" else "green"
                out.append(f"a small {colour} cube on top of a large {other} cube")
            else:
                out.append(toyworld.with_article(f"{colour} {kind}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", nargs="*", default=None, help="default: every kind in two colours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_point_e", help="one folder per prompt (replaced)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights-dir", default=None, help="weights from `text3d-edu train-pointe --weights-dir` "
                                                           "(default: the shipped ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip, prior = load_clip("pocket"), load_diffusion("pocket")
    rows = []
    for prompt in args.prompts or prompts():
        out = Path(args.out) / prompt.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)  # the benchmark's own output folder
        started = time.perf_counter()
        _, metrics = generate_point_e(prompt, out, seed=args.seed, prior=prior, clip=clip,
                                      weights_dir=args.weights_dir)
        obj = toyworld.parse_caption(prompt)
        true_xyz, _ = surface_points(obj, metrics["points"], seed=args.seed + 1)
        truth = cloud_fidelity(true_xyz, obj.albedo(true_xyz), prompt)
        row = {"prompt": prompt, "wall_seconds": round(time.perf_counter() - started, 1),
               **{k: metrics[k] for k in ("seconds", "stage_seconds", "chamfer", "chamfer_other",
                                          "nearest_other_kind", "chamfer_ratio", "point_colours", "point_colour_ok",
                                          "kind_acc", "colour_acc", "silhouette_iou")},
               "truth_chamfer_ratio": truth["chamfer_ratio"]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def share(test) -> float:
        return round(sum(map(test, rows)) / len(rows), 3)

    def mean(key: str) -> float:
        return round(statistics.mean(r[key] for r in rows), 3)

    stats_file = Path(args.weights_dir or WEIGHTS_DIR) / STATS_FILE
    training = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    print(json.dumps({
        "summary": True, "prompts": len(rows), "seed": args.seed, "threads": args.threads,
        "share_chamfer_ratio_le_half": share(lambda r: r["chamfer_ratio"] <= 0.5),
        "share_truth_chamfer_ratio_le_half": share(lambda r: r["truth_chamfer_ratio"] <= 0.5),
        "share_point_colour_ok": share(lambda r: r["point_colour_ok"]),
        "share_nearest_kind_is_own": share(lambda r: r["chamfer"] < r["chamfer_other"]),
        "mean_chamfer": mean("chamfer"), "mean_chamfer_ratio": mean("chamfer_ratio"),
        "mean_kind_acc": mean("kind_acc"), "mean_colour_acc": mean("colour_acc"),
        "mean_silhouette_iou": mean("silhouette_iou"), "min_silhouette_iou": min(r["silhouette_iou"] for r in rows),
        "mean_seconds": mean("seconds"), "max_seconds": max(r["seconds"] for r in rows),
        "training_minutes": training.get("minutes")}))


if __name__ == "__main__":
    main()
