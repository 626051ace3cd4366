"""Why does SDS make blobs? One change at a time, measured against the ground truth (lecture 03's ablation table).

Each variant is `generate`'s defaults with a few `GenerateConfig` options changed (``VARIANTS``), run on the same
prompts and seed; each row is the mean over the prompts of the pocket CLIP's verdict (kind, colour) and the
ground-truth fidelity (``text3d_edu.fidelity``: silhouette IoU, frame share against the truth's, skirt share,
colour error). One JSON line per prompt and per variant, then the table in markdown.

    python benchmarks/sds_ablation.py [--variants NAME ...] [--prompts P ...] [--method sds|clip]
                                      [--out outputs/sds_ablation]

About 1.5 minutes per prompt and variant on one CPU thread (the 4 default prompts × 10 variants: ≈ 1 hour).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from generate import run  # benchmarks/generate.py, beside this file

from text3d_edu.priors import load_clip, load_diffusion

PROMPTS = ["a blue table", "a green chair", "a red mug", "a brown house"]

# name → (what changes, GenerateConfig overrides relative to the library's defaults)
VARIANTS: dict[str, tuple[str, dict]] = {
    "defaults": ("the library's defaults", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--prompts", nargs="*", default=PROMPTS)
    parser.add_argument("--method", default="sds", choices=["sds", "clip"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/sds_ablation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip("pocket")
    prior = None if args.method == "clip" else load_diffusion("pocket")

    table = ["| variant | what changes | IoU | frame share (truth) | skirt | colour error | kind | colour | s/prompt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.variants:
        what, overrides = VARIANTS[name]
        started = time.perf_counter()
        _, s = run(args.prompts, args.method, overrides, Path(args.out) / args.method / name, args.seed, clip, prior,
                   label=name)
        print(json.dumps({**s, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        table.append(f"| {name} | {what} | {s['mean_silhouette_iou']:.2f} | {s['mean_frame_share']:.2f} "
                     f"({s['mean_truth_frame_share']:.2f}) | {s['mean_skirt_share']:.2f} | "
                     f"{s['mean_colour_error']:.2f} | {s['mean_kind_acc']:.2f} | {s['mean_colour_acc']:.2f} | "
                     f"{s['mean_wall_seconds']:.0f} |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
