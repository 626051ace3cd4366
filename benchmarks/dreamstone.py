"""DreamStone on the Pocket World: every kind in red and blue, text → shape after stage 1 and after stage 2, measured.

For each prompt (``dreamstone.EVAL_COLOURS`` × ``toyworld.KINDS``: 26 prompts), with the shipped stage-1 weights
(or ``--weights-dir``), ``dreamstone.evaluate`` decodes D(M(f_T)) (stage 1) and D(M'(f_T)) after stage 2 on that
prompt (``refine_mapper`` at ``Stage2Config``'s defaults, one seed). The row holds, for each stage, the nearest
catalogue kind by occupancy IoU, that IoU, the IoU with the prompt's own kind and the nearest catalogue colour of
the decoded surface; ``stage2_seconds`` is stage 2 (the fine-tuning and the decoding) on this CPU.

The summary line gives both stages' kind and colour accuracy over the prompts, the mean and worst stage-2 seconds,
the stage-1 training minutes from ``dreamstone.json`` and issue 14's acceptance lines, each checked: stage 2 improves
the kind accuracy and reaches ≥ 0.7, colour ≥ 0.8, stage 2 ≤ 60 s per prompt, stage-1 training ≤ 60 min.

    python benchmarks/dreamstone.py [--prompts ...] [--seed 0] [--threads 1] [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from text3d_edu import dreamstone, toyworld
from text3d_edu.priors import load_clip
from text3d_edu.priors.pocket_clip import WEIGHTS_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", nargs="*", default=None, help="default: every kind in red and blue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights-dir", default=None, help="weights from `text3d-edu train-dreamstone "
                                                           "--weights-dir` (default: the shipped ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip("pocket")
    svr, mapper = dreamstone.load_dreamstone(args.weights_dir)
    stage2 = dreamstone.Stage2Config()
    prompts = args.prompts or [toyworld.with_article(f"{c} {k}") for k in toyworld.KINDS
                               for c in dreamstone.EVAL_COLOURS]
    rows = []
    for prompt in prompts:
        truth = toyworld.parse_caption(prompt)
        before = dreamstone.evaluate(svr, mapper, clip, [prompt])
        after = dreamstone.evaluate(svr, mapper, clip, [prompt], refine=stage2, seed=args.seed)
        row = {"prompt": prompt, "kind": truth.kind, "colour": truth.colour,
               **{stage: {k: v for k, v in result["shapes"][0].items() if k != "prompt"}
                  for stage, result in (("stage1", before), ("stage2", after))},
               "stage2_seconds": after["seconds_per_prompt"]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    def accuracy(stage: str, key: str) -> float:
        return round(sum(r[stage][key] == r[key] for r in rows) / len(rows), 3)

    summary = {"summary": True, "prompts": len(rows), "seed": args.seed, "threads": args.threads,
               "stage2_config": asdict(stage2),
               **{f"{stage}_{key}_acc": accuracy(stage, key) for stage in ("stage1", "stage2")
                  for key in ("kind", "colour")},
               **{f"{stage}_mean_true_kind_iou": round(statistics.mean(r[stage]["true_kind_iou"] for r in rows), 3)
                  for stage in ("stage1", "stage2")},
               "stage2_mean_seconds": round(statistics.mean(r["stage2_seconds"] for r in rows), 2),
               "stage2_max_seconds": max(r["stage2_seconds"] for r in rows)}
    stats_file = Path(args.weights_dir or WEIGHTS_DIR) / dreamstone.STATS_FILE
    training = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    minutes = round(sum(training["minutes"].values()), 1) if "minutes" in training else None
    summary["stage1_training_minutes"] = minutes
    summary["acceptance"] = {
        "stage2_improves_kind": summary["stage2_kind_acc"] > summary["stage1_kind_acc"],
        "stage2_kind_ge_0.7": summary["stage2_kind_acc"] >= 0.7,
        "stage2_colour_ge_0.8": summary["stage2_colour_acc"] >= 0.8,
        "stage2_le_60_s_per_prompt": summary["stage2_max_seconds"] <= 60,
        "stage1_training_le_60_min": minutes is not None and minutes <= 60}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
