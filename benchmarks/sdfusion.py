"""SDFusion on the Pocket World, measured on held-out objects with the shipped weights (or ``--weights-dir``).

``pipeline.evaluate`` on ``--objects`` held-out objects (``data.sdf_dataset(held_out=True)``): the VQ-VAE's mean
reconstruction IoU (occupancy of the 32³ grids), text → shape for every kind in red and blue judged by the nearest
catalogue kind in any form (``data.judge_kind``), completion IoU with the true shape from half-shapes (the halves in
turn), and the seconds of one sample on this CPU. ``train_minutes_cpu`` is read from ``sdfusion.json`` (the
training's record). One JSON line, with issue 13's acceptance lines checked: VQ-VAE IoU ≥ 0.9, kind ≥ 0.8,
completion IoU ≥ 0.75, a sample ≤ 10 s, training ≤ 60 min.

    python benchmarks/sdfusion.py [--objects 104] [--completions N] [--steps 50] [--text-scale 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from text3d_edu import toyworld
from text3d_edu.priors import load_clip
from text3d_edu.priors.pocket_clip import WEIGHTS_DIR
from text3d_edu.sdfusion import pipeline
from text3d_edu.sdfusion.data import sdf_dataset
from text3d_edu.sdfusion.train import load_sdfusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=104, help="held-out objects (8 of each kind)")
    parser.add_argument("--completions", type=int, default=None, help="how many of them to complete (all)")
    parser.add_argument("--steps", type=int, default=pipeline.SampleConfig.steps, help="DDIM steps")
    parser.add_argument("--text-scale", type=float, default=None, help="s_text (default: SampleConfig's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights-dir", default=None, help="default: the shipped weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip("pocket")
    vqvae, unet = load_sdfusion(args.weights_dir)
    config = pipeline.SampleConfig(steps=args.steps)
    if args.text_scale is not None:
        config.scales["text"] = args.text_scale
    heldout = sdf_dataset(args.objects, args.seed, held_out=True, clip=clip)
    figures = pipeline.evaluate(vqvae, unet, clip, heldout, config, args.seed, completions=args.completions)
    training = json.loads((Path(args.weights_dir or WEIGHTS_DIR) / pipeline.STATS_FILE).read_text())
    summary = {**{k: v for k, v in figures.items() if k != "judged"}, "objects": args.objects,
               "sample_config": asdict(config), "seed": args.seed, "threads": args.threads,
               "train_minutes_cpu": training["train_minutes_cpu"],
               "wrong": {p: k for p, k in figures["judged"].items() if toyworld.parse_caption(p).kind != k}}
    summary["acceptance"] = {"vqvae_iou_ge_0.9": figures["vqvae_iou"] >= 0.9,
                             "text_kind_acc_ge_0.8": figures["text_kind_acc"] >= 0.8,
                             "completion_iou_ge_0.75": figures["completion_iou"] >= 0.75,
                             "sample_le_10_s": figures["sample_seconds"] <= 10,
                             "training_le_60_min": training["train_minutes_cpu"] <= 60}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
