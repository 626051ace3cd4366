"""Benchmark of text → 3D (`text3d-edu generate`) over many prompts: one JSON line per prompt, then a summary line.

Each prompt runs `generate` with the library's defaults for ``--method`` (what `text3d-edu generate PROMPT
--method M` does) and is judged by the pocket CLIP from 8 novel azimuths (kind_acc, colour_acc,
clip_rprecision) and against the prompt's true Pocket World object (``text3d_edu.fidelity``: silhouette IoU,
frame share against the truth's, skirt share, colour error), beside the same figures for the starting blob.
``--set KEY=VALUE`` changes one `GenerateConfig` option (VALUE in JSON; ``sds.guidance=20`` reaches inside), as
``benchmarks/sds_ablation.py`` does for each of its variants. ``wall_seconds`` is the whole call: the initial
judgement, the optimisation, the final judgement and the output files (PNG, GIF, GLB); the priors are loaded once
beforehand (``load_seconds``). For ``--method clip`` the judge is the CLIP that was optimised: an upper bound.

    python benchmarks/generate.py [--method sds|clip|sds-jacobian] [--out outputs/bench_generate] [--threads 1]
                                  [--prompts P ...] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from text3d_edu.generate import GenerateConfig, generate
from text3d_edu.priors import load_clip, load_diffusion

# every kind of the Pocket World once, with colours spread over the palette
PROMPTS = ["a red mug", "a blue table", "a yellow traffic cone", "a white snowman", "a green chair",
           "a purple rocket", "an orange duck", "a pink mushroom", "a black car", "a brown house", "a yellow lamp",
           "a green stool", "a small red cube on top of a large blue cube"]


FIGURES = ("kind_acc", "colour_acc", "clip_rprecision", "silhouette_iou", "frame_share", "truth_frame_share",
           "skirt_share", "colour_error")


def make_config(method: str, seed: int, overrides: dict) -> GenerateConfig:
    """``GenerateConfig`` with ``overrides`` {"lr": 0.1, "sds.guidance": 20, …} (dotted keys reach sub-configs)."""
    options: dict = {"method": method, "seed": seed}
    for key, value in overrides.items():
        target, *path = key.split(".")
        if path:  # a sub-config's option: {"sds.guidance": 20} → sds=SDSConfig(guidance=20)
            sub = options.get(target) or getattr(GenerateConfig(method=method), target)
            options[target] = type(sub)(**{**dataclasses.asdict(sub), path[0]: value})
        else:
            options[target] = tuple(value) if isinstance(value, list) else value
    return GenerateConfig(**options)  # built once, so that defaults that depend on options (VSD's λ) see them


def run(prompts: list[str], method: str, overrides: dict, out_root: Path, seed: int = 0, clip=None, prior=None,
        label: str = "") -> tuple[list[dict], dict]:
    """Generate every prompt; returns the per-prompt rows and a summary (means of ``FIGURES`` and times)."""
    rows = []
    for prompt in prompts:
        out = out_root / prompt.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)  # a benchmark's own output folder
        started = time.perf_counter()
        _, metrics = generate(prompt, out, make_config(method, seed, overrides), prior=prior, clip=clip,
                              progress=False)
        row = {"wall_seconds": round(time.perf_counter() - started, 1), **({"variant": label} if label else {}),
               **{k: v for k, v in metrics.items() if k != "judged_as"},
               "judged_as_most": Counter(metrics["judged_as"]).most_common(1)[0][0]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str) -> float:
        return round(statistics.mean(r[key] for r in rows), 3)

    summary = {"summary": True, **({"variant": label} if label else {}), "method": method, "prompts": len(rows),
               "overrides": overrides,
               **{f"mean_{k}": mean(k) for k in FIGURES},
               **{f"mean_initial_{k}": mean(f"initial_{k}") for k in FIGURES},
               "min_silhouette_iou": min(r["silhouette_iou"] for r in rows),
               "mean_wall_seconds": mean("wall_seconds"), "max_wall_seconds": max(r["wall_seconds"] for r in rows),
               "mean_seconds_per_step": mean("seconds_per_step")}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sds", choices=["sds", "sds-jacobian", "clip"])
    parser.add_argument("--prompts", nargs="*", default=PROMPTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="GenerateConfig options (JSON)")
    parser.add_argument("--out", default="outputs/bench_generate", help="one folder per prompt (replaced)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}

    started = time.perf_counter()
    clip = load_clip("pocket")
    prior = None if args.method == "clip" else load_diffusion("pocket")
    load_seconds = time.perf_counter() - started
    _, summary = run(args.prompts, args.method, overrides, Path(args.out) / args.method, args.seed, clip, prior)
    print(json.dumps({**summary, "threads": args.threads, "load_seconds": round(load_seconds, 1)}))


if __name__ == "__main__":
    main()
