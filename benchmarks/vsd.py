"""ProlificDreamer's VSD against DreamFusion's SDS on the same prompts: colour fidelity, diversity, skirt and cost.

For each prompt, ``--method vsd`` runs `generate` once with n particles (``--particles``) and ``--method sds``
runs it n times with the seeds 0…n−1 (from ``--seed``), so that both methods hand over n results and the
diversity figures compare like with like. Every result is judged as `generate` judges it (pocket CLIP from the 8
novel views of ``judge_cameras``; ``text3d_edu.fidelity`` against the true Pocket World object), and this script
adds, from the same 8 views (``fidelity_cameras``, 64×64, as ``field_fidelity`` renders them):

- ``albedo_error``: for each view, the mean over the visible pixels (opacity > 0.5) of |rendered colour − the
  true albedo of the prompt's colour| (``toyworld.COLOURS``, mean over RGB, in [0, 1]), then the mean over the
  views that show anything (1.0 when none does). fidelity's ``colour_error`` instead compares, at the best
  azimuth offset, only the pixels that both silhouettes cover, each with the truth's own albedo there (a brown
  house's red-brown roof, blue windows, dark door): it needs the shape right before it can judge the colour.
  ``albedo_error`` asks only "is what you drew the prompt's colour?", over all of it, so an object's details in
  other colours count against it a little (the truth's own figure is small but not 0). For a two-colour prompt
  (the cube stack) one colour cannot be right everywhere, so there ``albedo_error`` *is* ``colour_error``
  (``albedo_reference`` says which was used);
- ``saturation_error``: |mean HSV saturation (max − min) / max of the visible rendered pixels − that of the
  truth's visible albedo| (the truth seen at the result's best azimuth offset); ``saturation_bias`` keeps the
  sign (> 0: over-saturated, SDS's known defect at a large ω);
- ``skirt_fraction``: fidelity's ``skirt_share``, the share of the visible pixels (opacity > 0.1) that are
  semi-transparent (opacity < 0.9);
- ``diversity``: the mean over the n(n−1)/2 pairs of results of 1 − cosine between their pocket-CLIP image
  embeddings, each the mean embedding of the 8 judge views (32×32, what the judge sees); ``pixel_diversity``: the
  mean |Δ| between the pairs' judge views in [0, 1] (for VSD it equals `generate`'s ``particle_spread``).

Each per-prompt figure is the mean over the n results (``colour_views``: each result's number of the 8 views the
judge read as the prompt's colour). Cost: ``seconds`` is the whole per-prompt time of the `generate` calls (all
n results: the optimisation, the judgements and the output files, PNG, GIF, GLB and checkpoints);
``seconds_per_step`` is the optimisation time of one step of all n results (VSD: one step of its loop, which
updates every particle and takes the φ step; SDS: the sum over its n runs of their seconds per step);
``peak_mb``: the peak resident memory above the resident memory before the prompt's `generate` calls, from
Linux's VmHWM after resetting it through /proc/self/clear_refs, else the growth of ``ru_maxrss`` (0 when an
earlier prompt's peak is not passed): ``peak_memory`` in the summary says which. In one process, memory freed
by an earlier prompt may be reused without showing, so take it as a lower bound. The priors are loaded once
beforehand (``load_seconds``).

One JSON line per prompt and method, then one summary line per method (means over the prompts, the lowest
silhouette IoU; its ``seconds`` is the mean per prompt, its ``peak_mb`` the largest), then, when both methods ran,
one line comparing them: VSD/SDS ratios of the costs and VSD − SDS differences of every other figure.
``--set KEY=VALUE`` changes a `GenerateConfig` option of both methods, as in ``benchmarks/generate.py``
(``sds.*`` reaches only SDS, ``vsd.*`` only VSD).

How long, measured (2026-11-27, the defaults: 500 steps, 4 particles and 4 seeds, one thread per process, VSD and
SDS split over two processes on the 2-core CPU, grading jobs beside them for part of the time): 446 s per prompt for
VSD (0.87 s per step of the 4 particles) and 303 s for SDS (the 4 runs), 2.7 hours of CPU for the 13 prompts.

    python benchmarks/vsd.py [--method sds|vsd|both] [--particles 4] [--prompts P ...] [--steps 500]
                             [--seed 0] [--set KEY=VALUE ...] [--out outputs/bench_vsd] [--threads 1]
    python benchmarks/vsd.py --summarise LOG ...     # the summary of a run split over processes
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import text3d_edu  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)
import torch
from generate import PROMPTS, make_config  # benchmarks/generate.py, beside this file

from text3d_edu import toyworld
from text3d_edu.compare import diversity as clip_diversity
from text3d_edu.fidelity import AZIMUTH_OFFSETS, OPAQUE, fidelity_cameras, truth_renders
from text3d_edu.generate import generate, judge_cameras, render_views
from text3d_edu.priors import load_clip, load_diffusion
from text3d_edu.rendering import render_image

# the per-prompt figures that are means over the n results, in the order they are printed
FIGURES = ("kind_acc", "colour_acc", "silhouette_iou", "frame_share", "skirt_fraction", "colour_error",
           "albedo_error", "saturation_error", "saturation_bias")
COSTS = ("seconds", "seconds_per_step", "peak_mb")  # compared as VSD/SDS ratios; everything else as differences


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def peak_memory_meter() -> tuple[Callable[[], float], str]:
    """(a function returning the peak resident memory in MB above the resident memory at this call, the measure):
    Linux's VmHWM reset through /proc/self/clear_refs, else the growth of ``ru_maxrss`` (a lifetime peak)."""
    try:
        baseline = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak resident set size
        return (lambda: round(_status_mb("VmHWM") - baseline, 1)), "VmHWM"
    except (OSError, KeyError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return (lambda: round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1)), "ru_maxrss"


def saturation(rgb: torch.Tensor) -> torch.Tensor:
    """HSV saturation (max − min) / max of colours (..., 3) in [0, 1] → (...), 0 where max = 0."""
    high, low = rgb.max(dim=-1).values, rgb.min(dim=-1).values
    return (high - low) / high.clamp_min(1e-6)


def albedo_distance(rgb: torch.Tensor, visible: torch.Tensor, colour: str) -> float:
    """Mean over the views (V, H, W, 3) of the mean |rgb − COLOURS[colour]| (over RGB) on the ``visible`` pixels
    (V, H, W) of each view; views with none do not count."""
    target = torch.tensor(toyworld.COLOURS[colour])  # (3,)
    return statistics.mean((rgb[v][visible[v]] - target).abs().mean().item() for v in range(len(rgb))
                           if visible[v].any())


@torch.no_grad()
def colour_figures(field_: torch.nn.Module, metrics: dict, prompt: str, truths: list[dict]) -> dict:
    """albedo_error, saturation_error and saturation_bias of one result (a field and its `generate` metrics)."""
    cameras = fidelity_cameras()  # the judge's 8 views at 64×64, as field_fidelity renders them
    out = render_image(field_, cameras, 64, toyworld.BACKGROUND)
    rgb, visible = out["rgb"], out["opacity"] > OPAQUE  # (8, H, W, 3), (8, H, W)
    if not visible.any():  # nothing drawn: the worst figures, as fidelity's colour_error without overlap
        return {"albedo_error": 1.0, "saturation_error": 1.0, "saturation_bias": -1.0,
                "albedo_reference": "none visible"}
    obj = toyworld.parse_caption(prompt)
    if obj.second_colour:  # two colours: compare each pixel with the truth's own albedo there (fidelity)
        albedo_error, reference = metrics["colour_error"], "truth per pixel (fidelity colour_error)"
    else:
        albedo_error, reference = albedo_distance(rgb, visible, obj.colour), obj.colour
    truth = truths[AZIMUTH_OFFSETS.index(metrics["best_offset"])]
    true_saturation = saturation(truth["albedo"][truth["alpha"] > OPAQUE]).mean().item()
    bias = saturation(rgb[visible]).mean().item() - true_saturation
    return {"albedo_error": albedo_error, "saturation_error": abs(bias), "saturation_bias": bias,
            "albedo_reference": reference}


def diversity(embeddings: list[torch.Tensor], views: list[torch.Tensor]) -> tuple[float, float]:
    """(1 − cosine of the mean CLIP embeddings (D,), mean |Δ| of the judge views (8, 3, h, w)), each the mean over
    the pairs of results; (0, 0) for one result."""
    pairs = list(itertools.combinations(views, 2))
    if not pairs:
        return 0.0, 0.0
    pixels = statistics.mean((a - b).abs().mean().item() for a, b in pairs)
    return clip_diversity(embeddings), pixels


def run_prompt(prompt: str, method: str, n: int, overrides: dict, out_root: Path, seed: int, clip, prior
               ) -> tuple[dict, str]:
    """n results of ``method`` for ``prompt`` (VSD: one run of n particles; SDS: n runs, seeds seed…seed+n−1),
    judged; returns (the prompt's JSON row, the peak-memory measure)."""
    out = out_root / method / prompt.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)  # a benchmark's own output folder
    peak_mb, peak_memory = peak_memory_meter()
    started = time.perf_counter()
    if method == "vsd":
        config = make_config("vsd", seed, {**overrides, "vsd.particles": n})
        fields, metrics = generate(prompt, out, config, prior=prior, clip=clip, progress=False)
        results = list(zip(fields, metrics["per_particle"]))
        seconds_per_step = metrics["seconds_per_step"]
    else:
        configs = [make_config(method, seed + k, overrides) for k in range(n)]
        results = [generate(prompt, out / f"seed_{c.seed}", c, prior=prior, clip=clip, progress=False)
                   for c in configs]
        seconds_per_step, config = sum(m["seconds_per_step"] for _, m in results), configs[0]
    seconds, peak = time.perf_counter() - started, peak_mb()

    try:
        truths = truth_renders(prompt, fidelity_cameras())
    except ValueError:  # not a Pocket World caption: the judge's figures only
        truths = None
    each, embeddings, views = [], [], []
    for field_, m in results:
        judged = render_views(field_, judge_cameras(config.resolution))  # (8, 3, h, w)
        views.append(judged)
        with torch.no_grad():
            embeddings.append(clip.encode_image(judged).mean(dim=0))  # (D,)
        figures = {"kind_acc": m["kind_acc"], "colour_acc": m["colour_acc"]}
        if truths:
            figures.update({k: m[k] for k in ("silhouette_iou", "frame_share", "colour_error")},
                           skirt_fraction=m["skirt_share"], **colour_figures(field_, m, prompt, truths))
        figures["judged_as_most"] = Counter(m["judged_as"]).most_common(1)[0][0]
        each.append(figures)
    clip_diversity, pixel_diversity = diversity(embeddings, views)
    row = {"prompt": prompt, "method": method, "particles": n,
           **({"seeds": list(range(seed, seed + n))} if method != "vsd" else {"seed": seed}),
           "steps": results[0][1]["steps"],
           **{k: round(statistics.mean(e[k] for e in each), 3) for k in FIGURES if k in each[0]},
           "diversity": round(clip_diversity, 4), "pixel_diversity": round(pixel_diversity, 4),
           "seconds": round(seconds, 1), "seconds_per_step": round(seconds_per_step, 4), "peak_mb": peak,
           "colour_views": [round(e["colour_acc"] * 8) for e in each],  # of the judge's 8 views, per result
           "silhouette_iou_each": [e.get("silhouette_iou") for e in each],
           "judged_as_most": [e["judged_as_most"] for e in each],
           **({"albedo_reference": each[0]["albedo_reference"]} if truths else {})}
    obj = toyworld.parse_caption(prompt) if truths else None
    if obj and not obj.second_colour:  # the floor of albedo_error: the true object's own details in other colours
        row["truth_albedo_error"] = round(albedo_distance(truths[0]["albedo"], truths[0]["alpha"] > OPAQUE,
                                                          obj.colour), 3)
    return row, peak_memory


def summarise(rows: list[dict], method: str, n: int, peak_memory: str) -> dict:
    """Means over the prompts of every figure, the lowest silhouette IoU and the costs."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.mean(values), 4) if values else None

    ious = [r["silhouette_iou"] for r in rows if "silhouette_iou" in r]
    return {"summary": True, "method": method, "particles": n, "prompts": len(rows),
            **{k: mean(k) for k in (*FIGURES, "diversity", "pixel_diversity")},
            "min_silhouette_iou": min(ious) if ious else None,
            "seconds": mean("seconds"), "total_seconds": round(sum(r["seconds"] for r in rows), 1),
            "seconds_per_step": mean("seconds_per_step"), "peak_mb": max(r["peak_mb"] for r in rows),
            "peak_memory": peak_memory}


def compare(vsd: dict, sds: dict) -> dict:
    """VSD/SDS ratios of the costs, VSD − SDS differences of the other figures (summary lines)."""
    figures = [k for k in (*FIGURES, "min_silhouette_iou", "diversity", "pixel_diversity")
               if vsd.get(k) is not None and sds.get(k) is not None]
    return {"comparison": "vsd vs sds", "particles": vsd["particles"],
            **{f"{k}_ratio": round(vsd[k] / sds[k], 3) if sds[k] else None for k in COSTS},
            **{f"{k}_difference": round(vsd[k] - sds[k], 4) for k in figures}}


def summarise_logs(logs: list[Path]) -> None:
    """The summary line of each method and the comparison, from the prompt lines of one or more logs."""
    rows = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.startswith("{")]
    rows = [r for r in rows if "prompt" in r]
    summaries = {}
    for method in ("sds", "vsd"):
        mine = [r for r in rows if r["method"] == method]
        if mine:
            summaries[method] = summarise(mine, method, mine[0]["particles"], "see the logs")
            print(json.dumps({**summaries[method], "logs": [str(log) for log in logs]}), flush=True)
    if len(summaries) == 2:
        print(json.dumps(compare(summaries["vsd"], summaries["sds"])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="both", choices=["sds", "vsd", "both"])
    parser.add_argument("--particles", type=int, default=4, help="VSD's n; SDS runs the seeds seed…seed+n−1")
    parser.add_argument("--prompts", nargs="*", default=PROMPTS)
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the library's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="GenerateConfig options (JSON)")
    parser.add_argument("--out", default="outputs/bench_vsd", help="one folder per method and prompt (replaced)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarise", nargs="*", metavar="LOG", help="no runs: the summary and comparison lines of "
                        "the prompt lines in these logs (a run split over processes, one per core)")
    args = parser.parse_args()
    if args.summarise is not None:
        summarise_logs([Path(log) for log in args.summarise])
        return
    if args.particles < 1:
        parser.error("--particles must be at least 1")
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps

    started = time.perf_counter()
    clip, prior = load_clip("pocket"), load_diffusion("pocket")
    load_seconds = round(time.perf_counter() - started, 1)
    summaries = {}
    for method in (["sds", "vsd"] if args.method == "both" else [args.method]):
        rows, peak_memory = [], ""
        for prompt in args.prompts:
            row, peak_memory = run_prompt(prompt, method, args.particles, overrides, Path(args.out), args.seed,
                                          clip, prior)
            rows.append(row)
            print(json.dumps(row), flush=True)
        summaries[method] = summarise(rows, method, args.particles, peak_memory)
        print(json.dumps({**summaries[method], "overrides": overrides, "threads": args.threads,
                          "load_seconds": load_seconds}), flush=True)
    if len(summaries) == 2:
        print(json.dumps(compare(summaries["vsd"], summaries["sds"])), flush=True)


if __name__ == "__main__":
    main()
