"""Lecture 10's measured comparison: every method of the course on one prompt set, judged alike.

The lecture ends on a taxonomy (3DPT: paired text–3D data, 3DUT: unpaired, NO3D: no 3D data, Hybrid3D) and on
costs: DreamFusion, Magic3D and ProlificDreamer are "time consuming (2–3 hours for 1 object)", Point-E is "fast 3D
generation (1–2 mins)". ``compare`` puts numbers of this course beside those words. Each method runs exactly as a
student runs it — ``text3d-edu generate PROMPT --method NAME`` in its own process, so that its time is what the
student waits (loading the priors included) and its peak memory is that process's own (its ``VmHWM``) — and
every result is then judged by the same code, from the same novel views, whatever its 3D representation
(``results.load_result``: a grid, VSD's particles, Magic3D's mesh):

- ``clip_kind_acc`` / ``clip_colour_acc``: the pocket CLIP's verdict over the 8 judge views (``generate.judge``),
  the judge every method reports;
- ``cnn_kind_acc`` / ``cnn_colour_acc``: the second judge (``cnn_judge``), a CNN trained on ground-truth renders
  that shares nothing with the priors and can answer "no object", so that no method is judged only by a model it
  optimised (Dream Fields optimises the pocket CLIP itself; SDS, VSD and Magic3D distil priors trained beside it);
- ``silhouette_iou``: the ground-truth fidelity the method's own ``metrics.json`` reports (``fidelity``), when it
  does;
- ``janus_score``: the share of back views (|φ| > 135°) that the pocket CLIP calls "front" (``janus``), over 24
  azimuths × 3 elevations, at the object's best turn (``janus_score``);
- ``diversity``: 1 − cosine between the pocket-CLIP image embeddings (the mean over the 8 judge views) of two
  results of one prompt, the mean over the pairs: VSD's particles with each other, other methods' seeds;
- ``watertight``: the share of the results whose ``mesh.glb`` is a closed surface (trimesh's ``is_watertight``);
- ``seconds`` (wall time of one ``generate`` command, per object) and ``peak_mb``.

Beside each method: its place in the taxonomy and the cost its paper (or the lecture) reports, as cited constants.

    text3d-edu compare [--quick] [--prompts P ...] [--seeds N] [--methods M ...] [--out outputs/compare]

writes ``compare.json`` (every result's figures and the per-method means), ``compare.csv`` and ``compare.md``.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from text3d_edu import toyworld


@dataclass(frozen=True)
class Method:
    """A method of the course: how ``generate`` names it, the options of a full and a quick run, where it sits in
    the lecture's taxonomy and what its paper reports it costs."""

    name: str
    paper: str
    taxonomy: str  # 3DPT, 3DUT, NO3D or Hybrid3D
    lecture: str
    full_options: tuple[str, ...]
    quick_options: tuple[str, ...]
    paper_cost: str
    weights: tuple[str, ...] = ()  # files in text3d_edu/weights/ it needs; without them it has no row, only a note
    train_command: str = ""

    def missing_weights(self) -> list[str]:
        """The files of ``weights`` that are not shipped (a method trained by a command the course ships, whose
        weights no one has published yet)."""
        from text3d_edu.priors.pocket_clip import WEIGHTS_DIR

        return [name for name in self.weights if not (Path(WEIGHTS_DIR) / name).is_file()]


# The quick options keep `compare --quick` (one prompt, one seed, every method) within lecture 10's 5 minutes on a
# 2-core laptop: a third or less of the default optimisation steps, at which the per-prompt methods reach the
# object's rough silhouette and colour but not its details (lecture 10 shows them beside the truth).
METHODS = {m.name: m for m in [
    Method("clip", "Dream Fields (Jain et al., CVPR 2022)", "NO3D", "02", (), ("--steps", "100"),
           "per-prompt optimisation on TPUs; no figure cited here"),
    Method("sds", "DreamFusion (Poole et al., ICLR 2023)", "NO3D", "03", (), ("--steps", "150"),
           "about 1.5 h per object on a TPUv4 (as Magic3D reports it); the lecture: 2–3 h"),
    Method("sds-jacobian", "DreamFusion's ablation: SDS with the U-Net Jacobian", "NO3D", "03", (),
           ("--steps", "150"), "more than SDS: the backward pass through the U-Net (DreamFusion, sec. 3)"),
    Method("vsd", "ProlificDreamer (Wang et al., NeurIPS 2023)", "NO3D", "05", ("--particles", "2"),
           ("--particles", "2", "--steps", "120"), "hours per object on a GPU; the lecture: 2–3 h"),
    Method("magic3d", "Magic3D (Lin et al., CVPR 2023)", "NO3D", "04", (),
           ("--coarse-steps", "200", "--steps", "50"), "40 min per object on 8 A100 GPUs (Magic3D's abstract)"),
    Method("dreamstone", "DreamStone (Liu et al., TPAMI 2023)", "3DUT", "08", (), (),
           "one feed-forward mapping, then a short CLIP-consistency fine-tune; no figure cited here"),
    Method("point-e", "Point-E (Nichol et al., 2022)", "Hybrid3D", "09", (), (),
           "1–2 min per object on one GPU (the paper and the lecture)"),
    Method("sdfusion", "SDFusion (Cheng et al., CVPR 2023)", "3DPT", "07", (), (),
           "one denoising run of a trained latent diffusion model; no figure cited here",
           weights=("sdfusion_vqvae.safetensors", "sdfusion_unet.safetensors"),
           train_command="text3d-edu train-sdfusion"),
]}
QUICK_PROMPTS = ["a brown house"]
PROMPTS = ["a brown house", "a red mug", "a blue table", "a yellow traffic cone"]
FIGURES = ("clip_kind_acc", "clip_colour_acc", "cnn_kind_acc", "cnn_colour_acc", "silhouette_iou", "janus_score",
           "diversity", "watertight", "seconds", "peak_mb")


# The child reports its own peak memory: VmHWM, the high-water mark of the memory it mapped after exec. Neither
# os.wait4's ru_maxrss nor RUSAGE_SELF will do: Linux carries into both the parent's resident size at fork time.
CHILD = """import sys
from text3d_edu.cli import main
code = main(sys.argv[1:])
print("peak_kb", next((line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")), 0))
sys.exit(code)
"""


def run_method(method: Method, prompt: str, seed: int, out: Path, quick: bool) -> dict:
    """``text3d-edu generate PROMPT --method NAME`` in a child process (one torch thread): {"seconds", "peak_mb",
    "command"}. Raises RuntimeError with the command's last output lines when it fails."""
    options = method.quick_options if quick else method.full_options
    argv = ["generate", prompt, "--method", method.name, "--seed", str(seed), "--threads", "1", "--out", str(out),
            *options]
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        tail = "\n".join((child.stdout + child.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"`text3d-edu {shlex.join(argv)}` failed (exit {child.returncode}):\n{tail}")
    peak_kb = int(child.stdout.strip().splitlines()[-1].split()[1])
    return {"seconds": round(seconds, 1), "peak_mb": round(peak_kb / 1024, 1) if peak_kb else None,
            "command": f"text3d-edu {shlex.join(argv)}"}


def _mean_embedding(clip, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clip.encode_image(images).mean(dim=0)  # (D,)


def diversity(embeddings: list[torch.Tensor]) -> float | None:
    """Mean over pairs of results of 1 − cosine between their mean CLIP image embeddings (D,); None for one."""
    pairs = list(itertools.combinations(embeddings, 2))
    if not pairs:
        return None
    return statistics.mean(1 - F.cosine_similarity(a, b, dim=0).item() for a, b in pairs)


def watertight(result_dir: Path) -> bool | None:
    """Is ``result_dir``'s mesh.glb (VSD: each particle's) a closed surface? None when there is no mesh."""
    import trimesh

    paths = sorted(result_dir.glob("particle_*/mesh.glb")) or [result_dir / "mesh.glb"]
    if not paths[0].is_file():
        return None
    return all(trimesh.load(path, force="mesh").is_watertight for path in paths)


def janus_score(verdicts: list[str], azimuth: list[float]) -> float:
    """``janus.JanusReport.janus_score`` (the share of back views judged "front") with the object turned to face
    φ = 0: a generated object's front need not face there (Point-E's faces the camera of its synthetic view), so
    the turn (in steps of 15°) is the one at which the most views are judged with their true label, and the back
    views are those of that turn. A two-faced object still shows a front from behind; a turned honest one does
    not."""
    from text3d_edu import janus

    reports = [janus.janus_report(verdicts, [(a + turn + 180) % 360 - 180 for a in azimuth])
               for turn in range(0, 360, 15)]
    return max(reports, key=lambda report: report.view_accuracy).janus_score


def judge_result(result_dir: Path, prompt: str, clip, cnn) -> list[dict]:
    """The figures of every object in ``result_dir`` (VSD: one per particle): both judges from the 8 judge views,
    the Janus score, the silhouette IoU that the result's metrics.json reports, and its CLIP embedding."""
    from text3d_edu import cnn_judge, janus
    from text3d_edu.generate import judge, judge_cameras
    from text3d_edu.results import load_result

    result = load_result(result_dir)
    metrics = json.loads((result_dir / "metrics.json").read_text())
    views_cameras, janus_cams = judge_cameras(), janus.janus_cameras()
    views = result.render(views_cameras).clamp(0, 1)  # (n·8, 3, 32, 32), particle-major
    around = result.render(janus_cams).clamp(0, 1)  # (n·72, 3, 32, 32)
    n = len(views) // len(views_cameras.c2w)
    per_particle = metrics.get("per_particle") or [metrics]
    objects = []
    for k in range(n):
        mine = views[k * len(views) // n:(k + 1) * len(views) // n]
        seen = around[k * len(around) // n:(k + 1) * len(around) // n]
        by_clip, by_cnn = judge(mine, prompt, clip), cnn_judge.judge(cnn, mine, prompt)
        verdicts = janus.judge_views(seen, prompt, clip)
        objects.append({"clip_kind_acc": by_clip["kind_acc"], "clip_colour_acc": by_clip["colour_acc"],
                        "cnn_kind_acc": by_cnn["kind_acc"], "cnn_colour_acc": by_cnn["colour_acc"],
                        "silhouette_iou": per_particle[k].get("silhouette_iou"),
                        "janus_score": round(janus_score(verdicts, janus_cams.azimuth.tolist()), 3),
                        "embedding": _mean_embedding(clip, mine)})
    return objects


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.mean(float(v) for v in values), 3) if values else None


def compare(prompts: list[str] | None = None, methods: list[str] | None = None, seeds: int = 1, quick: bool = False,
            out_dir: str | Path = "outputs/compare", resume: bool = False, progress: bool = True) -> dict:
    """Run every method in ``methods`` (default: all whose weights are shipped; the others are listed under
    "unavailable" with the command that trains them) on ``prompts`` (default ``PROMPTS``, or ``QUICK_PROMPTS``
    with ``quick``) with the seeds 0…``seeds``−1, judge the results alike, write compare.json / .csv / .md into
    ``out_dir``, which must be empty or new; ``resume`` reuses the runs an interrupted comparison finished there
    (each run's time and memory are kept in its folder's compare_run.json). Returns {"methods": one summary row
    per method, "results": one row per generate run, "diversity": one row per method and prompt}."""
    from text3d_edu.cnn_judge import load_cnn_judge
    from text3d_edu.priors import load_clip

    prompts = prompts or (QUICK_PROMPTS if quick else PROMPTS)
    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {', '.join(map(repr, unknown))}: choose from {', '.join(METHODS)}")
    unavailable = {name: f"no weights ({', '.join(m.missing_weights())}): train them with {m.train_command}"
                   for name, m in METHODS.items() if m.missing_weights()}
    if methods and set(methods) & set(unavailable):
        raise ValueError("; ".join(f"{name}: {unavailable[name]}" for name in methods if name in unavailable))
    methods = methods or [name for name in METHODS if name not in unavailable]
    for prompt in prompts:
        toyworld.parse_caption(prompt)  # a clear error for a prompt outside the Pocket World, before any run
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    out = Path(out_dir)
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose another --out, or pass --resume to reuse its finished runs")
    clip, cnn = load_clip("pocket"), load_cnn_judge()
    results, spreads, rows = [], [], []
    for name in methods:
        method, mine, spread = METHODS[name], [], []
        for prompt in prompts:
            embeddings = []
            for seed in range(seeds):
                result_dir = out / name / prompt.replace(" ", "_") / f"seed_{seed}"
                if progress:
                    print(f"compare: {name} on {prompt!r}, seed {seed} …", flush=True)
                record = result_dir / "compare_run.json"
                if resume and record.is_file():
                    run = json.loads(record.read_text())
                else:
                    shutil.rmtree(result_dir, ignore_errors=True)  # an unfinished run of this comparison's own
                    run = run_method(method, prompt, seed, result_dir, quick)
                    record.write_text(json.dumps(run))
                judged = judge_result(result_dir, prompt, clip, cnn)
                embeddings += [o.pop("embedding") for o in judged]
                row = {"method": name, "prompt": prompt, "seed": seed, **run, "objects": len(judged),
                       "watertight": watertight(result_dir),
                       **{k: _mean(o[k] for o in judged) for k in judged[0]}}
                mine.append(row)
            spread.append({"method": name, "prompt": prompt, "diversity": diversity(embeddings)})
        figures = {k: _mean(r.get(k) for r in (spread if k == "diversity" else mine)) for k in FIGURES}
        rows.append({"method": name, "paper": method.paper, "taxonomy": method.taxonomy, "lecture": method.lecture,
                     **figures, "results": len(mine), "paper_cost": method.paper_cost})
        results += mine
        spreads += spread
    table = {"prompts": prompts, "seeds": seeds, "quick": quick, "methods": rows, "results": results,
             "diversity": spreads, "unavailable": unavailable}
    write_tables(table, out)
    return table


def markdown(table: dict) -> str:
    """The per-method rows as a Markdown table (the one lecture 10 shows)."""
    head = ["method", "taxonomy", "s / object", "peak MB", "CLIP kind", "CLIP colour", "CNN kind", "CNN colour",
            "IoU", "Janus", "diversity", "watertight", "the paper's cost"]
    keys = ["seconds", "peak_mb", "clip_kind_acc", "clip_colour_acc", "cnn_kind_acc", "cnn_colour_acc",
            "silhouette_iou", "janus_score", "diversity", "watertight"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["methods"]:
        cells = [row["method"], row["taxonomy"], *("—" if row[k] is None else f"{row[k]:g}" for k in keys),
                 row["paper_cost"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n{name}: not run, {why}." for name, why in table.get("unavailable", {}).items()]
    return "\n".join(lines) + "\n"


def write_tables(table: dict, out: Path) -> None:
    """compare.json (everything), compare.csv (one row per method) and compare.md (the Markdown table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(table, indent=1))
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table["methods"][0]))
        writer.writeheader()
        writer.writerows(table["methods"])
    (out / "compare.md").write_text(markdown(table))
