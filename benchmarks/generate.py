"""Benchmark of text → 3D (`text3d-edu generate`) over many prompts: one JSON line per prompt, then a summary line.

Each prompt runs `generate` with the library's defaults for ``--method`` (what `text3d-edu generate PROMPT
--method M` does) and is judged by the pocket CLIP from 8 novel azimuths (kind_acc, colour_acc,
clip_rprecision), beside the same figures for the starting blob. ``wall_seconds`` is the whole call: the initial
judgement, the optimisation, the final judgement and the output files (PNG, GIF, GLB); the priors are loaded once
beforehand (``load_seconds``). For ``--method clip`` the judge is the CLIP that was optimised: an upper bound.

    python benchmarks/generate.py [--method sds|clip|sds-jacobian] [--out outputs/bench_generate] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from text3d_edu.generate import GenerateConfig, generate
from text3d_edu.priors import load_clip, load_diffusion

# every kind of the Pocket World once, with colours spread over the palette
PROMPTS = ["a red mug", "a blue table", "a yellow traffic cone", "a white snowman", "a green chair",
           "a purple rocket", "an orange duck", "a pink mushroom", "a black car", "a brown house", "a yellow lamp",
           "a green stool", "a small red cube on top of a large blue cube"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sds", choices=["sds", "sds-jacobian", "clip"])
    parser.add_argument("--prompts", nargs="*", default=PROMPTS)
    parser.add_argument("--steps", type=int, default=None, help="default: the library's (500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/bench_generate", help="one folder per prompt (replaced)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    clip = load_clip("pocket")
    prior = None if args.method == "clip" else load_diffusion("pocket")
    load_seconds = time.perf_counter() - started

    rows = []
    for prompt in args.prompts:
        out = Path(args.out) / args.method / prompt.replace(" ", "_")
        shutil.rmtree(out, ignore_errors=True)  # a benchmark's own output folder
        config = GenerateConfig(method=args.method, seed=args.seed,
                                **({"steps": args.steps} if args.steps is not None else {}))
        started = time.perf_counter()
        _, metrics = generate(prompt, out, config, prior=prior, clip=clip, progress=False)
        row = {"wall_seconds": round(time.perf_counter() - started, 1),
               **{k: v for k, v in metrics.items() if k != "judged_as"},
               "judged_as_most": Counter(metrics["judged_as"]).most_common(1)[0][0]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str) -> float:
        return round(statistics.mean(r[key] for r in rows), 3)

    print(json.dumps({
        "summary": True, "method": args.method, "prompts": len(rows), "threads": args.threads,
        "load_seconds": round(load_seconds, 1),
        **{f"mean_{k}": mean(k) for k in ("kind_acc", "colour_acc", "clip_rprecision", "initial_kind_acc",
                                          "initial_colour_acc", "initial_clip_rprecision")},
        "mean_wall_seconds": mean("wall_seconds"), "max_wall_seconds": max(r["wall_seconds"] for r in rows),
        "mean_seconds_per_step": mean("seconds_per_step"),
    }))


if __name__ == "__main__":
    main()
