"""Benchmark of Magic3D (`text3d-edu generate PROMPT --method magic3d`): one JSON line per prompt, then a summary.

Each prompt runs ``generate_magic3d`` with the library's defaults (stage 1: SDS on a voxel grid with the pocket
pixel prior at 32×32; stage 2: a DMTet mesh rasterised at 64×64 under the pocket latent prior). Per prompt it
prints both stages' figures side by side — the pocket CLIP's kind / colour accuracy from the 8 judge views (the
mesh's 64² views area-downsampled to the judge's 32²), silhouette IoU and colour error against the true Pocket
World object — and the mesh's faces, watertightness, connected components, each stage's seconds and the wall time.

The summary checks the acceptance lines of the Magic3D issue: mean fine kind ≥ 0.85 and colour ≥ 0.9; no prompt
worse than stage 1 by more than one view (1/8) in kind or colour; every mesh watertight with one main component
(≥ 90 % of the faces); mean silhouette IoU ≥ 0.55 and above stage 1's; ≤ 6 min per prompt.

    python benchmarks/magic3d.py [--out outputs/bench_magic3d] [--threads 1] [--prompts P ...]
                                 [--latent-weights-dir DIR] [--fine-steps N] [--coarse-steps N] [--guidance W]
                                 [--dmtet-resolution R] [--normal-consistency W] [--reuse-coarse DIR]
    python benchmarks/magic3d.py --merge RUN1.jsonl RUN2.jsonl ...

``--reuse-coarse DIR`` copies stage 1's result of an earlier run with the same stage-1 settings (DIR/<prompt>/coarse,
deterministic for a seed) and resumes from it, to tune stage 2 without re-running stage 1; a prompt's seconds are
then stage 1's recorded seconds plus this run's. ``--merge`` prints the summary of the rows of several runs (e.g. the
prompts split over two processes, one per core).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from generate import PROMPTS  # benchmarks/generate.py: the 13 prompts, every kind once
from text3d_edu.generate import GenerateConfig
from text3d_edu.guidance.sds import SDSConfig
from text3d_edu.magic3d import Magic3DConfig, generate_magic3d
from text3d_edu.priors import load_clip, load_diffusion

MAX_SECONDS = 6 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_magic3d")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--latent-weights-dir", default=None, help="the pocket LDM's weights (default: the package's)")
    parser.add_argument("--fine-steps", type=int, default=None)
    parser.add_argument("--coarse-steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None, help="the fine stage's ω")
    parser.add_argument("--dmtet-resolution", type=int, default=None)
    parser.add_argument("--normal-consistency", type=float, default=None, help="the fine stage's weight on it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-coarse", default=None, help="a folder of earlier results whose coarse/ to reuse")
    parser.add_argument("--merge", nargs="+", default=None, help="JSON-lines outputs of runs to summarise together")
    args = parser.parse_args()
    if args.merge:
        rows = [json.loads(line) for path in args.merge for line in Path(path).read_text().splitlines()
                if line.startswith("{") and '"summary"' not in line]
        print(json.dumps(summarise(rows, rows[0]["config"], None)), flush=True)
        return
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    clip, prior = load_clip("pocket"), load_diffusion("pocket")
    fine_prior = load_diffusion("pocket-latent", weights_dir=args.latent_weights_dir)
    load_seconds = round(time.perf_counter() - started, 1)
    defaults = Magic3DConfig()
    coarse = GenerateConfig(method="sds", seed=args.seed, steps=args.coarse_steps or defaults.coarse.steps)
    config = Magic3DConfig(coarse=coarse, seed=args.seed, steps=args.fine_steps or defaults.steps,
                           dmtet_resolution=args.dmtet_resolution or defaults.dmtet_resolution,
                           normal_consistency_weight=(defaults.normal_consistency_weight
                                                      if args.normal_consistency is None else args.normal_consistency),
                           sds=SDSConfig(guidance=args.guidance) if args.guidance is not None else defaults.sds)

    rows = []
    settings = {"coarse_steps": config.coarse.steps, "fine_steps": config.steps, "guidance": config.sds.guidance,
                "dmtet_resolution": config.dmtet_resolution,
                "normal_consistency": config.normal_consistency_weight}
    for prompt in args.prompts:
        out = Path(args.out) / prompt.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)  # the benchmark's own output folder
        reused = Path(args.reuse_coarse or "") / prompt.replace(" ", "_") / "coarse"
        reuse = args.reuse_coarse is not None and (reused / "metrics.json").exists()
        if reuse:
            shutil.copytree(reused, out / "coarse")
        started = time.perf_counter()
        _, m = generate_magic3d(prompt, out, config, prior=prior, fine_prior=fine_prior, clip=clip, resume=True,
                                progress=False)
        wall = time.perf_counter() - started
        row = {"prompt": prompt, "config": settings, "coarse_reused": reuse,
               **{f"coarse_{k}": m["coarse"].get(k) for k in ("kind_acc", "colour_acc", "silhouette_iou",
                                                              "colour_error")},
               **{k: m.get(k) for k in ("kind_acc", "colour_acc", "silhouette_iou", "colour_error", "faces",
                                        "watertight", "components", "main_component_share", "seconds_coarse",
                                        "seconds_fine", "tau")}}
        row["prompt_seconds"] = round(wall + (m["seconds_coarse"] if reuse else 0.0), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(summarise(rows, settings, load_seconds)), flush=True)


def summarise(rows: list[dict], settings: dict, load_seconds: float | None) -> dict:
    """The means over the prompts and the Magic3D issue's acceptance lines."""
    def mean(key: str) -> float:
        return round(statistics.mean(r[key] for r in rows), 3)

    one_view = 1 / 8 + 1e-9
    summary = {
        "summary": True, "prompts": len(rows), "load_seconds": load_seconds,
        "config": settings,
        **{f"mean_{k}": mean(k) for k in ("kind_acc", "colour_acc", "silhouette_iou", "colour_error")},
        **{f"mean_coarse_{k}": mean(f"coarse_{k}") for k in ("kind_acc", "colour_acc", "silhouette_iou")},
        "mean_prompt_seconds": mean("prompt_seconds"), "max_prompt_seconds": max(r["prompt_seconds"] for r in rows),
        "coarse_reused": sum(r["coarse_reused"] for r in rows),
        "worse_than_coarse_by_over_a_view": [r["prompt"] for r in rows
                                             if r["kind_acc"] < r["coarse_kind_acc"] - one_view
                                             or r["colour_acc"] < r["coarse_colour_acc"] - one_view],
        "not_watertight_or_split": [r["prompt"] for r in rows
                                    if not r["watertight"] or r["main_component_share"] < 0.9],
    }
    summary["acceptance"] = {
        "kind_acc >= 0.85": summary["mean_kind_acc"] >= 0.85,
        "colour_acc >= 0.9": summary["mean_colour_acc"] >= 0.9,
        "never worse than stage 1 by more than a view": not summary["worse_than_coarse_by_over_a_view"],
        "watertight, one main component": not summary["not_watertight_or_split"],
        "silhouette IoU >= 0.55 and above stage 1": (summary["mean_silhouette_iou"] >= 0.55
                                                     and summary["mean_silhouette_iou"]
                                                     > summary["mean_coarse_silhouette_iou"]),
        "<= 6 min per prompt": summary["max_prompt_seconds"] <= MAX_SECONDS,
    }
    return summary


if __name__ == "__main__":
    main()
