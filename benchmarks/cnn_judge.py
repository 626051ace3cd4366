"""Benchmark of the second judge (text3d_edu/cnn_judge.py): how it does on held-out truth, and what it says of results.

1. ``validate``'s figures for the shipped CNN: kind / colour accuracy on renders of held-out objects, the held-out
   blobs it calls "no object", and its verdict on the grey blob every SDS run starts from (issue 17's bar: ≥ 95 %
   kind and colour; the blob given no kind with confidence).
2. With ``--results DIR ...`` (folders written by ``text3d-edu generate``, any method): both judges' verdicts on the
   same 8 renders from the judge's cameras, side by side, one JSON line per result, then the means — where the
   pocket CLIP (the model the priors were trained beside) and a judge that shares nothing with them disagree.

    python benchmarks/cnn_judge.py [--objects 260] [--views 4] [--results DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from text3d_edu.cnn_judge import judge as cnn_verdict
from text3d_edu.cnn_judge import load_cnn_judge, validate
from text3d_edu.generate import judge, judge_cameras
from text3d_edu.priors import load_clip
from text3d_edu.results import load_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=260, help="held-out objects to validate on")
    parser.add_argument("--views", type=int, default=4, help="renders per held-out object")
    parser.add_argument("--results", nargs="*", default=[], help="result folders of text3d-edu generate")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_cnn_judge()
    started = time.perf_counter()
    print(json.dumps({"validation": validate(model, n_objects=args.objects, views_per_object=args.views),
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    if not args.results:
        return
    clip, rows = load_clip("pocket"), []
    for folder in map(Path, args.results):
        prompt = json.loads((folder / "metrics.json").read_text())["prompt"]
        with torch.no_grad():
            views = load_result(folder).render(judge_cameras(32)).clamp(0, 1)
        by_clip, by_cnn = judge(views, prompt, clip), cnn_verdict(model, views, prompt)
        rows.append({"result": str(folder), "prompt": prompt,
                     "clip_kind_acc": by_clip["kind_acc"], "cnn_kind_acc": by_cnn["kind_acc"],
                     "clip_colour_acc": by_clip["colour_acc"], "cnn_colour_acc": by_cnn["colour_acc"],
                     "cnn_judged_as": by_cnn["judged_as"]})
        print(json.dumps(rows[-1]), flush=True)
    judged = [r for r in rows if r["clip_kind_acc"] is not None]
    if judged:
        print(json.dumps({"summary": True, "results": len(judged),
                          **{f"mean_{k}": round(statistics.mean(r[k] for r in judged), 3)
                             for k in ("clip_kind_acc", "cnn_kind_acc", "clip_colour_acc", "cnn_colour_acc")}}))


if __name__ == "__main__":
    main()
