"""Why does SDS make blobs? One change at a time, measured against the ground truth (lecture 03's ablation table).

Each variant is `generate`'s defaults with a few `GenerateConfig` options changed (``VARIANTS``), run on the same
prompts and seed; each row is the mean over the prompts of the pocket CLIP's verdict (kind, colour) and the
ground-truth fidelity (``text3d_edu.fidelity``: silhouette IoU, frame share against the truth's, skirt share,
colour error). One JSON line per prompt and per variant, then the table in markdown.

    python benchmarks/sds_ablation.py [--variants NAME ...] [--prompts P ...]
                                      [--out outputs/sds_ablation]

About 70–90 s per prompt and variant on one CPU thread (4 prompts × 14 variants: ≈ 1.3 hours).
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

# The library's defaults before the ablation: no geometry regulariser, cameras up to 60° of elevation.
BEFORE = {"sparsity_weight": 0.0, "sparsity_free": 0.0, "opaque_weight": 0.0, "opaque_from": 0.0,
          "elevation_range": [-10, 60]}
SPARSE = {**BEFORE, "sparsity_weight": 1.0}
HALF_WAY = {**SPARSE, "opaque_weight": 0.3, "opaque_from": 0.5}

# name → (what changes, GenerateConfig overrides relative to the library's defaults). The rows of lecture 03's table;
# "snowman" and "mushroom" are why the defaults leave 15 % of each image free of the sparsity price.
VARIANTS: dict[str, tuple[str, dict]] = {
    "before": ("the defaults before: ω = 30, blob ρ = 0.5, no regulariser, elevation −10°…60°", BEFORE),
    "shading": ("+ shading augmentation (albedo 0.2 / lambertian 0.5 / textureless 0.3)",
                {**BEFORE, "shading": [0.2, 0.5, 0.3]}),
    "blob-0.3": ("+ a smaller starting blob (ρ = 0.3)", {**BEFORE, "blob_radius": 0.3}),
    "sparsity-0.3": ("+ sparsity λ = 0.29", {**BEFORE, "sparsity_weight": 0.29}),
    "sparsity-1": ("+ sparsity λ = 0.98", {**BEFORE, "sparsity_weight": 0.98}),
    "sparsity-2": ("+ sparsity λ = 2", {**BEFORE, "sparsity_weight": 2.0}),
    "sparsity+blob-0.3": ("sparsity λ = 1 + blob ρ = 0.3", {**SPARSE, "blob_radius": 0.3}),
    "sparsity+elevation-90": ("sparsity λ = 1 + elevation −10°…90°", {**SPARSE, "elevation_range": [-10, 90]}),
    "sparsity+opaque-0.1": ("sparsity λ = 1 + opaqueness 0.1 from the start", {**SPARSE, "opaque_weight": 0.1}),
    "sparsity+opaque-0.3": ("sparsity λ = 1 + opaqueness 0.3 from the start", {**SPARSE, "opaque_weight": 0.3}),
    "sparsity+opaque-0.3-half-way": ("sparsity λ = 1 + opaqueness 0.3 from half-way", HALF_WAY),
    "half-way+elevation-90+anneal": ("… + elevation −10°…90° + t_max annealed to 0.5 from half-way",
                                     {**HALF_WAY, "elevation_range": [-10, 90], "anneal_t_max": [0.5, 0.5]}),
    "defaults-0.1": ("the first new defaults: sparsity 1 with 15 % of each image free, opaqueness 0.1 from the start, "
                     "elevation −10°…90°", {"opaque_weight": 0.1, "opaque_from": 0.0}),
    "defaults": ("the defaults: sparsity 1 with 15 % of each image free, opaqueness 0.3 from half-way, "
                 "elevation −10°…90°", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--prompts", nargs="*", default=PROMPTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/sds_ablation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip("pocket")
    prior = load_diffusion("pocket")

    table = ["| variant | what changes | IoU | frame share (truth) | skirt | colour error | kind | colour | s/prompt |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.variants:
        what, overrides = VARIANTS[name]
        started = time.perf_counter()
        _, s = run(args.prompts, "sds", overrides, Path(args.out) / name, args.seed, clip, prior,
                   label=name)
        print(json.dumps({**s, "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        table.append(f"| {name} | {what} | {s['mean_silhouette_iou']:.2f} | {s['mean_frame_share']:.2f} "
                     f"({s['mean_truth_frame_share']:.2f}) | {s['mean_skirt_share']:.2f} | "
                     f"{s['mean_colour_error']:.2f} | {s['mean_kind_acc']:.2f} | {s['mean_colour_acc']:.2f} | "
                     f"{s['mean_wall_seconds']:.0f} |")
    print("\n".join(table))


if __name__ == "__main__":
    main()
