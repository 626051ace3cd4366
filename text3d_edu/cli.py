"""The ``text3d-edu`` command: thin wrappers that parse arguments, call the library and say where results are.

Each sub-command lives in a ``_cmd_*`` function that imports what it needs lazily, so ``text3d-edu --help``
answers instantly without importing torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback


def _cmd_world(args: argparse.Namespace) -> int:
    from text3d_edu import toyworld

    if args.list:
        print("kinds:   " + ", ".join(toyworld.KINDS))
        print("colours: " + ", ".join(toyworld.COLOURS))
        return 0
    obj = toyworld.parse_caption(args.caption) if args.caption else toyworld.sample_object(args.seed)
    path = toyworld.save_views(obj, args.out, n_views=args.views, resolution=args.resolution, seed=args.seed)
    print(f"{obj.caption!r}: {args.views} posed views written to {path}")
    return 0


def _cmd_nerf(args: argparse.Namespace) -> int:
    from text3d_edu import nerf

    result = nerf.fit_from_caption(
        args.caption, out_dir=args.out, field_kind=args.field, steps=args.steps, seed=args.seed
    )
    print(f"held-out PSNR {result['psnr_heldout']:.2f} dB after {result['steps']} steps "
          f"({result['seconds']:.1f} s); results in {args.out}")
    return 0


def _cmd_make_exercises(args: argparse.Namespace) -> int:
    from text3d_edu.grading import exercises

    if args.check:
        problems = exercises.stale_exercises(args.solutions, args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"regenerate: text3d-edu make-exercises --solutions {args.solutions} --out {args.out}",
                  file=sys.stderr)
            return 1
        print(f"{args.out} is up to date with {args.solutions}")
        return 0
    written = exercises.make_exercises(args.solutions, args.out)
    print(f"{len(written)} student copies written to {args.out}: " + ", ".join(p.name for p in written))
    return 0


GRADE_EXIT_STATUS = """exit status:
  0  every notebook was graded (and reaches --min-score, when given)
  1  some notebook could not be graded (not a notebook, no matching master) or is below --min-score
  2  the grader failed: bad arguments or masters, a kernel that does not start, any other error"""


def _cmd_grade(args: argparse.Namespace) -> int:
    try:
        return _grade(args)
    except ValueError:  # bad input: main says what to fix
        raise
    except Exception:  # a bug or a broken environment must not read as "below the pass mark" (1) in CI
        traceback.print_exc()
        print("text3d-edu grade: the grader failed (exit status 2)", file=sys.stderr)
        return 2


def _grade(args: argparse.Namespace) -> int:
    from pathlib import Path

    from text3d_edu.grading import cluster, grader, junit, progress, report
    from text3d_edu.grading.sandbox import Confinement, Limits

    pass_mark = grader.PassMark.parse(args.min_score) if args.min_score is not None else None
    reports = [Path(path) for path in (args.json, args.csv, args.junit) if path]
    for report_path in reports:  # before grading, so that a path that cannot be written fails at once
        report_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.progress or (f"{reports[0]}.jsonl" if reports else None)
    if args.resume and log_path is None:
        raise ValueError("--resume reads the progress log: pass --progress FILE, or the --json/--csv/--junit "
                         "report of the interrupted run (its log is REPORT.jsonl)")
    limits = Limits(cell_timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                    memory_mb=args.memory_mb, processes=args.processes)
    solutions = Path(args.solutions) if args.solutions else grader.default_solutions_dir()
    log = progress.ProgressLog(log_path, progress.masters_fingerprint(solutions), args.resume) if log_path else None
    if args.scheduler:
        print(f"grading on the Dask cluster at {args.scheduler}: each worker confines its kernels as its own "
              "machine allows (see each result's sandbox)", flush=True)
    else:
        confinement = Confinement.for_batch(solutions, [Path(path) for path in args.notebooks],
                                            [Path(log_path)] if log_path else [])
        print(confinement.protections, flush=True)
    reused = {path: result for path in args.notebooks if log and (result := log.reusable(path))}
    if reused:
        print(f"{len(reused)} of {len(args.notebooks)} notebooks already graded in {log_path} (same file, same "
              f"masters): not graded again")

    def on_result(result: grader.SubmissionResult) -> None:
        if log:
            log.append(result)
        print(report.feedback(result), flush=True)

    try:
        to_grade = [path for path in args.notebooks if path not in reused]
        if args.scheduler:
            fresh = cluster.grade_on_cluster(to_grade, args.scheduler, solutions, limits, on_result=on_result,
                                             files_to_hide=[Path(log_path)] if log_path else [])
        else:
            fresh = grader.grade_notebooks(to_grade, solutions=solutions, limits=limits, jobs=args.jobs,
                                           on_result=on_result, confinement=confinement)
    finally:
        if log:
            log.close()
    fresh = iter(fresh)
    results = [reused[path] if path in reused else next(fresh) for path in args.notebooks]
    if args.json:
        report.write_json(results, args.json)
    if args.csv:
        report.write_csv(results, args.csv)
    if args.junit:
        junit.write_junit(results, args.junit)
    if args.summary:
        print(report.summary(results, pass_mark))
        if os.environ.get("GITHUB_STEP_SUMMARY"):  # GitHub Actions shows this file on the run's page
            with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
                f.write(report.summary_markdown(results, pass_mark))
    failed = [r.notebook for r in results if not r.graded]
    below = [r.notebook for r in results if r.graded and pass_mark and not pass_mark.reached_by(r)]
    print(f"graded {len(results) - len(failed)} of {len(results)} notebooks"
          + (f"; not graded: {', '.join(failed)}" if failed else "")
          + (f"; below {pass_mark}: {', '.join(below)}" if below else "")
          + (f"; results in {', '.join(map(str, reports))}" if reports else "")
          + (f"; progress log {log_path}" if log_path else ""))
    if any(r.grader_failed for r in results):
        return 2
    return 1 if failed or below else 0


def _train(args: argparse.Namespace, name: str, train, flags: list[str], **kwargs) -> dict | None:
    """Run a training command's ``train(out, weights_dir, ...)``: records the command line that reproduces it (the
    ``flags`` of ``args``), returns its stats, or None after saying why when the loss diverged."""
    from text3d_edu.priors.train import TrainingDiverged

    command = f"text3d-edu {name} " + " ".join(f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in flags)
    try:
        return train(args.out, args.weights_dir, seed=args.seed, resume=args.resume, threads=args.threads,
                     workers=args.workers, command=command, **kwargs)
    except TrainingDiverged as err:
        print(f"text3d-edu {name}: stopped: {err}", file=sys.stderr)
        return None


def _cmd_train_pocket(args: argparse.Namespace) -> int:
    from text3d_edu.priors.train import train_pocket

    stats = _train(args, "train-pocket", train_pocket, ["clip_steps", "unet_steps", "seed", "threads", "workers"],
                   clip_steps=args.clip_steps, unet_steps=args.unet_steps)
    if stats is None:
        return 1
    print(f"trained in {stats['minutes']['total']:.1f} min; weights and pocket_priors.json written "
          f"to {args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_train_pocket_latent(args: argparse.Namespace) -> int:
    from text3d_edu.priors.train_latent import train_pocket_latent

    stats = _train(args, "train-pocket-latent", train_pocket_latent,
                   ["vae_steps", "latent_unet_steps", "latent_size", "objects", "seed", "threads", "workers"],
                   vae_steps=args.vae_steps, latent_unet_steps=args.latent_unet_steps, latent_size=args.latent_size,
                   n_objects=args.objects)
    if stats is None:
        return 1
    print(f"trained in {stats['minutes']['total']:.1f} min (held-out VAE PSNR {stats['vae_psnr_heldout']:.2f} dB); "
          f"weights and pocket_latent.json written to {args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_train_pointe(args: argparse.Namespace) -> int:
    from text3d_edu.point_e.train import train_point_e

    stats = _train(args, "train-pointe", train_point_e,
                   ["base_steps", "upsampler_steps", "objects", "width", "layers", "seed", "threads"],
                   base_steps=args.base_steps, upsampler_steps=args.upsampler_steps, n_objects=args.objects,
                   width=args.width, layers=args.layers)
    if stats is None:
        return 1
    print(f"trained in {sum(stats['minutes'].values()):.1f} min; weights and point_e.json written "
          f"to {args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_train_dreamstone(args: argparse.Namespace) -> int:
    from text3d_edu.dreamstone import train_dreamstone

    stats = _train(args, "train-dreamstone", train_dreamstone,
                   ["svr_steps", "mapper_steps", "objects", "noise", "seed", "threads"],
                   svr_steps=args.svr_steps, mapper_steps=args.mapper_steps, n_objects=args.objects,
                   noise=args.noise)
    if stats is None:
        return 1
    accuracy = stats["stage1_text_to_shape"]
    print(f"trained in {sum(stats['minutes'].values()):.1f} min (stage-1 text → shape: kind "
          f"{accuracy['kind_acc']:.2f}, colour {accuracy['colour_acc']:.2f}); weights and dreamstone.json written "
          f"to {args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_train_sdfusion(args: argparse.Namespace) -> int:
    from text3d_edu.sdfusion.train import train_sdfusion

    stats = _train(args, "train-sdfusion", train_sdfusion, ["vqvae_steps", "unet_steps", "objects", "seed", "threads"],
                   vqvae_steps=args.vqvae_steps, unet_steps=args.unet_steps, n_objects=args.objects)
    if stats is None:
        return 1
    measured = stats["measured"]
    print(f"trained in {stats['train_minutes_cpu']:.1f} min (held-out VQ-VAE IoU {measured['vqvae_iou']:.2f}, text "
          f"→ shape kind {measured['text_kind_acc']:.2f}, completion IoU {measured['completion_iou']:.2f}); weights "
          f"and sdfusion.json written to {args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_train_judge(args: argparse.Namespace) -> int:
    from text3d_edu.cnn_judge import train_cnn_judge

    stats = _train(args, "train-judge", train_cnn_judge, ["steps", "objects", "seed", "threads", "workers"],
                   steps=args.steps, n_objects=args.objects)
    if stats is None:
        return 1
    print(f"trained in {sum(stats['minutes'].values()):.1f} min; held-out kind {stats['heldout_kind_acc']:.1%}, "
          f"colour {stats['heldout_colour_acc']:.1%}; weights and cnn_judge.json written to "
          f"{args.weights_dir or 'text3d_edu/weights'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.compare import compare, markdown

    torch.set_num_threads(args.threads)
    table = compare(args.prompts, args.methods, args.seeds, args.quick, args.out, args.resume)
    print(markdown(table), end="")
    print(f"{len(table['results'])} runs; compare.json, compare.csv and compare.md in {args.out}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from torchvision.utils import save_image

    from text3d_edu.priors import load_diffusion
    from text3d_edu.priors.real import WeightsUnavailable

    torch.set_num_threads(args.threads)
    try:
        prior = load_diffusion(args.backend) if args.backend == "pocket" else load_diffusion(
            args.backend, model_id=args.model_id)
    except WeightsUnavailable as err:
        print(f"text3d-edu sample: {err}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    images = prior.sample([args.prompt], n=args.n, guidance=args.guidance, steps=args.steps, generator=generator)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (args.prompt.replace(" ", "_").replace(",", "") + ".png")
    save_image(images, path, nrow=min(args.n, 8), padding=1)
    print(f"{args.n} samples of {args.prompt!r} (ω = {args.guidance}, {args.steps} DDIM steps) written to {path}")
    return 0


def _cmd_similarity(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from text3d_edu.priors import load_clip
    from text3d_edu.priors.real import WeightsUnavailable

    try:
        clip = load_clip(args.backend)
    except WeightsUnavailable as err:
        print(f"text3d-edu similarity: {err}", file=sys.stderr)
        return 2
    if args.images:
        names = args.images
        images = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)
                              .permute(2, 0, 1) for p in names])  # (B, 3, H, W); same-size images
    else:
        from text3d_edu.cameras import orbit_cameras
        from text3d_edu.toyworld import parse_caption
        from text3d_edu.world_render import render

        names = [f"render of {c!r}" for c in args.captions]
        cams = orbit_cameras([30.0], 20.0, resolution=clip.image_size)
        images = torch.cat([render(parse_caption(c), cams)["rgb"] for c in args.captions]).permute(0, 3, 1, 2)
    texts = args.texts or args.captions
    if not texts:
        raise ValueError("give --texts (and --images), or captions of world objects to render")
    scores = clip.similarity(images, texts)  # (B_img, B_txt)
    width = max(len(t) for t in texts)
    for name, row in zip(names, scores.tolist()):
        print(name)
        for text, score in zip(texts, row):
            print(f"  {text:<{width}}  {score:+.3f}")
    return 0


def generate_guidance(backend: str, guidance: float | None = None, method: str = "sds") -> float:
    """ω for ``generate``: the user's ``--guidance``, else the backend's default — the pocket prior's measured
    sweet spot (``SDSConfig``'s default, 30) or, for Stable Diffusion, DreamFusion's ω = 100 (same convention:
    ε̂ = (1 + ω) ε_φ(x_t; y, t) − ω ε_φ(x_t; t); threestudio's ``guidance_scale`` 100 too). For VSD:
    ``VSDConfig``'s 7.5 on the pocket prior (with the regularisers scaled by ω / 30, see ``GenerateConfig``) and
    ProlificDreamer's guidance scale 7.5 (ω = 6.5) on Stable Diffusion."""
    if guidance is not None:
        return guidance
    if method == "vsd":
        from text3d_edu.guidance.vsd import VSDConfig

        return 6.5 if backend == "stable-diffusion" else VSDConfig.guidance
    from text3d_edu.guidance.sds import SDSConfig

    return 100.0 if backend == "stable-diffusion" else SDSConfig.guidance


def _cmd_generate(args: argparse.Namespace) -> int:
    given = {"--partial": args.partial is not None, "--keep": args.keep is not None, "--image": args.image is not None}
    if args.method != "sdfusion" and any(given.values()):
        raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: options of --method sdfusion only (got "
                         f"--method {args.method})")
    if args.method == "point-e":
        return _generate_point_e(args)
    if args.method == "magic3d":
        return _generate_magic3d(args)
    if args.method == "dreamstone":
        return _generate_dreamstone(args)
    if args.method == "sdfusion":
        return _generate_sdfusion(args)
    if args.coarse_steps is not None:
        raise ValueError(f"--coarse-steps applies to --method magic3d only (got --method {args.method})")
    import torch

    from text3d_edu.generate import GenerateConfig, generate
    from text3d_edu.guidance.sds import SDSConfig
    from text3d_edu.guidance.vsd import VSDConfig
    from text3d_edu.priors import load_diffusion
    from text3d_edu.priors.real import WeightsUnavailable

    torch.set_num_threads(args.threads)
    if args.particles is not None and args.method != "vsd":
        raise ValueError(f"--particles applies to --method vsd only (got --method {args.method})")
    omega = generate_guidance(args.backend, args.guidance, args.method)
    method_config = ({"vsd": VSDConfig(guidance=omega, **({"particles": args.particles}
                                                           if args.particles is not None else {}))}
                     if args.method == "vsd" else {"sds": SDSConfig(guidance=omega)})
    config = GenerateConfig(method=args.method, seed=args.seed, view_prompts=not args.no_view_prompt,
                            **method_config, **({"steps": args.steps} if args.steps is not None else {}))
    prior = None
    if args.method != "clip" and args.backend != "pocket":
        try:
            prior = load_diffusion(args.backend)
        except WeightsUnavailable as err:
            print(f"text3d-edu generate: {err}", file=sys.stderr)
            return 2
    _, metrics = generate(args.prompt, args.out, config, prior=prior, resume=args.resume)
    judged = ", ".join(f"{k} {metrics[k]}" for k in ("kind_acc", "colour_acc", "clip_rprecision"))
    files = "views.png, turntable.gif, mesh.glb and metrics.json"
    if args.method == "vsd":
        n = metrics["particles"]
        files = (f"views.png and metrics.json (means over {n} particles), and each particle's {files} in "
                 + ("particle_0/" if n == 1 else f"particle_0/ … particle_{n - 1}/"))
    print(f"{args.prompt!r} ({args.method}, {metrics['steps']} steps, {metrics['seconds']:.0f} s): {judged} "
          f"(initial field: kind_acc {metrics['initial_kind_acc']}); {files} in {args.out}")
    return 0


def _reject_options(given: dict[str, bool], method: str, what_it_does: str) -> None:
    """A clear error naming every option in ``given`` ({"--flag": was it given}) that ``method`` does not take."""
    if any(given.values()):
        raise ValueError(f"{', '.join(k for k, v in given.items() if v)}: not options of --method {method}, which "
                         f"{what_it_does}")


def _generate_point_e(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.point_e.pipeline import PointEConfig, generate_point_e

    torch.set_num_threads(args.threads)
    given = {"--particles": args.particles is not None, "--steps": args.steps is not None, "--resume": args.resume,
             "--no-view-prompt": args.no_view_prompt, "--backend": args.backend != "pocket",
             "--coarse-steps": args.coarse_steps is not None}
    _reject_options(given, "point-e", "samples with the pocket priors and Point-E models (it takes --seed, "
                    "--guidance, --out, --threads)")
    config = PointEConfig(**({"guidance": args.guidance} if args.guidance is not None else {}))
    try:
        _, metrics = generate_point_e(args.prompt, args.out, config, seed=args.seed)
    except FileNotFoundError as err:  # no Point-E weights: say how to train them
        print(f"text3d-edu generate: {err}", file=sys.stderr)
        return 2
    judged = ", ".join(f"{k} {metrics[k]}" for k in ("kind_acc", "colour_acc", "clip_rprecision"))
    print(f"{args.prompt!r} (point-e, {metrics['points']} points, {metrics['seconds']:.0f} s): {judged}; "
          f"views.png, turntable.gif, mesh.glb, cloud.ply, synthetic_view.png and metrics.json in {args.out}")
    return 0


def _generate_dreamstone(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.dreamstone import Stage2Config, generate_dreamstone

    torch.set_num_threads(args.threads)
    given = {"--particles": args.particles is not None, "--guidance": args.guidance is not None,
             "--resume": args.resume, "--no-view-prompt": args.no_view_prompt, "--backend": args.backend != "pocket",
             "--coarse-steps": args.coarse_steps is not None}
    _reject_options(given, "dreamstone", "maps the pocket CLIP's text features to a shape and refines the "
                    "mapper with the pocket CLIP (it takes --steps for stage 2, --seed, --out, --threads)")
    config = Stage2Config(**({"steps": args.steps} if args.steps is not None else {}))
    try:
        _, metrics = generate_dreamstone(args.prompt, args.out, config, seed=args.seed)
    except FileNotFoundError as err:  # no DreamStone weights: say how to train them
        print(f"text3d-edu generate: {err}", file=sys.stderr)
        return 2
    judged = ", ".join(f"{k} {metrics[k]}" for k in ("kind_acc", "colour_acc", "clip_rprecision"))
    print(f"{args.prompt!r} (dreamstone, {metrics['steps']} stage-2 steps, {metrics['seconds']:.0f} s): {judged}; "
          f"views.png, stage1_views.png, turntable.gif, mesh.glb and metrics.json in {args.out}")
    return 0


def _generate_sdfusion(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.sdfusion.pipeline import SampleConfig, generate_sdfusion

    torch.set_num_threads(args.threads)
    given = {"--particles": args.particles is not None, "--resume": args.resume,
             "--no-view-prompt": args.no_view_prompt, "--backend": args.backend != "pocket",
             "--coarse-steps": args.coarse_steps is not None}
    _reject_options(given, "sdfusion", "samples a shape with the SDFusion models (it takes --steps for DDIM, "
                    "--guidance for the text's s_i, --partial and --keep, --image, --seed, --out, --threads)")
    if args.keep is not None and args.partial is None:
        raise ValueError("--keep names the half of the --partial shape to keep: give --partial CAPTION too")
    config = SampleConfig(**({"steps": args.steps} if args.steps is not None else {}))
    if args.guidance is not None:
        config.scales["text"] = args.guidance
    try:
        _, metrics = generate_sdfusion(args.prompt, args.out, config, seed=args.seed, partial=args.partial,
                                       keep=args.keep or "left", image=args.image)
    except FileNotFoundError as err:  # no SDFusion weights: say how to train them
        print(f"text3d-edu generate: {err}", file=sys.stderr)
        return 2
    judged = ", ".join(f"{k} {metrics[k]}" for k in ("kind_acc", "colour_acc", "clip_rprecision"))
    print(f"{args.prompt!r} (sdfusion, {metrics['steps']} DDIM steps, {metrics['seconds']:.1f} s): shape judged a "
          f"{metrics['shape']['kind']} (IoU {metrics['shape']['iou']}); {judged}; views.png, turntable.gif, "
          f"mesh.glb and metrics.json in {args.out}")
    return 0


def _generate_magic3d(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.generate import GenerateConfig
    from text3d_edu.guidance.sds import SDSConfig
    from text3d_edu.magic3d import Magic3DConfig, generate_magic3d

    torch.set_num_threads(args.threads)
    given = {"--particles": args.particles is not None, "--backend": args.backend != "pocket"}
    _reject_options(given, "magic3d", "runs on the pocket priors (with real weights, call "
                    "text3d_edu.magic3d.generate_magic3d with prior= and fine_prior= "
                    "load_diffusion('stable-diffusion'))")
    defaults = Magic3DConfig()
    coarse = GenerateConfig(method="sds", seed=args.seed, view_prompts=not args.no_view_prompt,
                            steps=args.coarse_steps if args.coarse_steps is not None else defaults.coarse.steps)
    config = Magic3DConfig(coarse=coarse, seed=args.seed, view_prompts=not args.no_view_prompt,
                           **({"steps": args.steps} if args.steps is not None else {}),
                           **({"sds": SDSConfig(guidance=args.guidance)} if args.guidance is not None else {}))
    try:
        _, metrics = generate_magic3d(args.prompt, args.out, config, resume=args.resume)
    except FileNotFoundError as err:  # no pocket LDM weights: say how to train them
        print(f"text3d-edu generate: {err}", file=sys.stderr)
        return 2
    judged = ", ".join(f"{k} {metrics[k]}" for k in ("kind_acc", "colour_acc", "clip_rprecision"))
    print(f"{args.prompt!r} (magic3d, {metrics['coarse_steps']} coarse + {metrics['steps']} fine steps, "
          f"{metrics['seconds']:.0f} s): {judged} (coarse field: kind_acc {metrics['coarse']['kind_acc']}); "
          f"views.png, turntable.gif, mesh.glb ({metrics['faces']} faces) and metrics.json in {args.out}, "
          f"stage 1's field in {args.out}/coarse")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import torch

    from text3d_edu.results import render_result

    torch.set_num_threads(args.threads)
    images = render_result(args.result_dir, args.out, args.azimuths, args.elevation, args.radius, args.resolution,
                           force=args.force)
    particles = len(images) // len(args.azimuths)  # VSD's particles, one row each
    print(f"{len(args.azimuths)} views{f' of each of {particles} particles' if particles > 1 else ''} of "
          f"{args.result_dir} (elevation {args.elevation:g}°, radius {args.radius:g}, "
          f"{args.resolution}×{args.resolution}) written to {args.out}")
    return 0


def _add_training_run_options(p: argparse.ArgumentParser, cores: int = 1) -> None:
    """The options every train-* command shares: its seed, CPU threads, rendering workers and --resume."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=cores)
    p.add_argument("--workers", type=int, default=cores, help="processes that render the training set")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="text3d-edu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="render posed views of a Pocket World object (or list the catalogue)")
    p.add_argument("caption", nargs="?", help='e.g. "a tall brown table"; random object when omitted')
    p.add_argument("--out", default="outputs/world")
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the known kinds and colours")
    p.set_defaults(func=_cmd_world)

    p = sub.add_parser("generate", help="text → 3D by distillation: Dream Fields (clip), DreamFusion (sds), "
                                        "ProlificDreamer (vsd), Magic3D (magic3d); or by Point-E's sampler "
                                        "(point-e), DreamStone (dreamstone), SDFusion (sdfusion)")
    p.add_argument("prompt", help='e.g. "a red mug"')
    p.add_argument("--method", choices=["sds", "sds-jacobian", "clip", "vsd", "magic3d", "point-e", "dreamstone",
                                        "sdfusion"],
                   default="sds",
                   help="magic3d: a coarse SDS field, then a textured mesh refined by SDS with the pocket latent "
                        "prior; point-e samples a cloud (text → image → cloud) instead of optimising a field; "
                        "dreamstone maps CLIP's text feature to a shape (stage 1) and refines the mapper (stage 2); "
                        "sdfusion samples an SDF by latent diffusion (text, and optionally --partial, --image)")
    p.add_argument("--partial", default=None,
                   help="sdfusion: complete half of this Pocket World object (a caption, e.g. 'a red chair')")
    p.add_argument("--keep", choices=["left", "right", "bottom", "top", "back", "front"], default=None,
                   help="sdfusion: the half of --partial that is known (default left)")
    p.add_argument("--image", default=None, help="sdfusion: a picture (PNG) whose pocket-CLIP features also guide")
    p.add_argument("--particles", type=int, default=None,
                   help="VSD's number of 3D scenes n (default 2), optimised together")
    p.add_argument("--out", default="outputs/generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default 500; magic3d: the fine stage's, default 200)")
    p.add_argument("--coarse-steps", type=int, default=None, help="magic3d: the coarse SDS stage's steps (600)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight ω (default: the backend's; SDS 30 pocket, 100 "
                        "stable-diffusion; VSD 7.5 pocket, 6.5 stable-diffusion; magic3d: the fine stage's, 30; "
                        "point-e: the cloud models' s, 3)")
    p.add_argument("--no-view-prompt", action="store_true", help="do not append ', front view' etc. (Janus!)")
    p.add_argument("--backend", choices=["pocket", "stable-diffusion"], default="pocket")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is safest on a busy machine)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("render", help="render a generated result from chosen cameras into a .png grid or a .npy")
    p.add_argument("result_dir", help="the folder text3d-edu generate wrote (its --out)")
    p.add_argument("--azimuths", type=float, nargs="+", default=[22.5 + 45.0 * k for k in range(8)],
                   help="degrees; 0 looks at the object's front (default: the judge's 22.5, 67.5, ..., 337.5)")
    p.add_argument("--elevation", type=float, default=15.0, help="degrees (default: the judge's 15)")
    p.add_argument("--radius", type=float, default=3.2, help="camera distance (default: the judge's 3.2)")
    p.add_argument("--resolution", type=int, default=32, help="pixels per side (default: the judge's 32)")
    p.add_argument("--out", required=True, help="FILE.png (labelled grid) or FILE.npy (float32 (B, 3, N, N))")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is safest on a busy machine)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("nerf", help="fit a NeRF to posed views of a Pocket World object (lecture 01)")
    p.add_argument("caption", help='e.g. "a red mug"')
    p.add_argument("--out", default="outputs/nerf")
    p.add_argument("--field", choices=["grid", "classic"], default="grid")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_nerf)

    p = sub.add_parser("make-exercises", help="generate the student copies (exercises/) from the masters")
    p.add_argument("--solutions", default="solutions", help="folder of master notebooks")
    p.add_argument("--out", default="exercises", help="the only folder written to")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the out-of-date files")
    p.set_defaults(func=_cmd_make_exercises)

    p = sub.add_parser("grade", help="grade notebooks against their masters (a class's, or your own)",
                       epilog=GRADE_EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--solutions", help="masters; default: the repository's solutions/")
    p.add_argument("--json", help="write every result to this JSON file")
    p.add_argument("--csv", help="write a gradebook (one row per notebook) to this CSV file")
    p.add_argument("--progress", metavar="FILE",
                   help="append each result to this JSON-lines file as soon as it is graded "
                        "(default: the first of --json/--csv/--junit with .jsonl added)")
    p.add_argument("--resume", action="store_true",
                   help="keep the progress log and skip the notebooks it already holds (same file, same masters)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (one kernel each)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="grade on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.5:8786), one task "
                        "per notebook, instead of --jobs kernels here; needs pip install \"text3d-edu[cluster]\"")
    p.add_argument("--timeout", type=float, default=120, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=float, default=900, help="seconds per notebook")
    p.add_argument("--memory-mb", type=int, default=4096,
                   help="heap limit per notebook (Linux); importing torch alone needs ~1000")
    p.add_argument("--processes", type=int, default=256,
                   help="processes and threads per notebook (a grader running as root on Linux); torch uses ~12")
    p.add_argument("--junit", help="write a JUnit XML report (a suite per notebook, a test per question) for CI")
    p.add_argument("--min-score", metavar="X",
                   help="the pass mark: points (5) or a share of each notebook's maximum (60%%); sets the exit status")
    p.add_argument("--summary", action="store_true",
                   help="print a per-question table (and append it to $GITHUB_STEP_SUMMARY when that is set)")
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("train-pocket", help="train the pocket CLIP and diffusion priors (80 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/pocket_priors", help="checkpoints and the cached renders")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--clip-steps", type=int, default=1500, help="the shipped weights: 2500 (on a GPU)")
    p.add_argument("--unet-steps", type=int, default=3200, help="the shipped weights: 5000 (on a GPU)")
    _add_training_run_options(p, cores=2)
    p.set_defaults(func=_cmd_train_pocket)

    p = sub.add_parser("train-pocket-latent", help="train the pocket latent diffusion prior (a VAE, then a U-Net "
                       "on its latents of 64×64 renders); uses the pocket CLIP from train-pocket")
    p.add_argument("--out", default="runs/pocket_latent", help="checkpoints and the cached 64×64 renders")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--latent-unet-steps", type=int, default=4000)
    p.add_argument("--latent-size", type=int, default=16, choices=(8, 16), help="latents (4, S, S) of 64×64 images")
    p.add_argument("--objects", type=int, default=2080, help="Pocket World objects (12 renders each)")
    _add_training_run_options(p, cores=2)
    p.set_defaults(func=_cmd_train_pocket_latent)

    p = sub.add_parser("train-pointe", help="train Point-E's base model and upsampler on Pocket World clouds")
    p.add_argument("--out", default="runs/point_e", help="checkpoints and the cached clouds and renders")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--base-steps", type=int, default=10_000)
    p.add_argument("--upsampler-steps", type=int, default=4_000)
    p.add_argument("--objects", type=int, default=1040, help="Pocket World objects (4 renders each)")
    p.add_argument("--width", type=int, default=64, help="both transformers' width (a multiple of their 4 heads)")
    p.add_argument("--layers", type=int, default=3, help="both transformers' depth")
    _add_training_run_options(p)
    p.set_defaults(func=_cmd_train_pointe)

    p = sub.add_parser("train-dreamstone", help="train DreamStone's stage 1 on the Pocket World: the single-view "
                       "reconstruction model (E_S, D) on renders ↔ SDF grids, then the CLIP → shape mapper M")
    p.add_argument("--out", default="runs/dreamstone", help="checkpoints and the cached renders and grids")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--svr-steps", type=int, default=4000)
    p.add_argument("--mapper-steps", type=int, default=3000)
    p.add_argument("--objects", type=int, default=1040, help="Pocket World objects (4 renders each)")
    p.add_argument("--noise", type=float, default=0.75,
                   help="w in the mapper's input normalize((1 − w) f_I + w n/‖n‖) (0: no noise mixing)")
    _add_training_run_options(p)
    p.set_defaults(func=_cmd_train_dreamstone)

    p = sub.add_parser("train-sdfusion", help="train SDFusion on the Pocket World: the 3D VQ-VAE on 32³ SDF grids, "
                       "then the latent U-Net with text, image and partial-shape conditions")
    p.add_argument("--out", default="runs/sdfusion", help="checkpoints and the cached grids and renders")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--vqvae-steps", type=int, default=3000)
    p.add_argument("--unet-steps", type=int, default=2000)
    p.add_argument("--objects", type=int, default=1040, help="Pocket World objects (4 renders each)")
    _add_training_run_options(p)
    p.set_defaults(func=_cmd_train_sdfusion)

    p = sub.add_parser("train-judge", help="train the second judge, a CNN that names kind and colour of 32×32 "
                       "renders (no object for blobs), on ground-truth Pocket World renders")
    p.add_argument("--out", default="runs/cnn_judge", help="checkpoints and the cached renders")
    p.add_argument("--weights-dir", default=None, help="where the safetensors go (default: the package's)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--objects", type=int, default=1040, help="Pocket World objects (8 renders each)")
    _add_training_run_options(p)
    p.set_defaults(func=_cmd_train_judge)

    p = sub.add_parser("compare", help="run every method on a prompt set and judge the results alike (lecture 10): "
                                       "compare.json, compare.csv, compare.md")
    p.add_argument("--quick", action="store_true", help="one prompt, fewer steps: the lecture-sized run (≈ 5 min)")
    p.add_argument("--prompts", nargs="+", default=None, help="Pocket World captions (default: a fixed set of 4)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every method of generate")
    p.add_argument("--seeds", type=int, default=1, help="runs per method and prompt (seeds 0…N−1): diversity")
    p.add_argument("--out", default="outputs/compare", help="a new or empty folder")
    p.add_argument("--resume", action="store_true", help="reuse the finished runs of an interrupted comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the judging (each run uses 1)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("sample", help="sample images from a diffusion prior into a PNG grid")
    p.add_argument("prompt", help='e.g. "a red mug" or "a red mug, back view"')
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", default="outputs/samples")
    p.add_argument("--guidance", type=float, default=5.0, help="ω in ε̂ = (1+ω)ε(x;y,t) − ωε(x;t)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a tiny U-Net gains little from more)")
    p.add_argument("--backend", choices=["pocket", "stable-diffusion"], default="pocket")
    p.add_argument("--model-id", default="stabilityai/stable-diffusion-2-1-base")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("similarity", help="CLIP text–image scores of images (or renders of world captions)")
    p.add_argument("captions", nargs="*", help="world captions to render and score (when --images is absent)")
    p.add_argument("--images", nargs="+", help="image files (same size)")
    p.add_argument("--texts", nargs="+", help="texts to score against (default: the captions)")
    p.add_argument("--backend", choices=["pocket", "openclip"], default="pocket")
    p.set_defaults(func=_cmd_similarity)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: say what is wrong and how to fix it, without a traceback
        print(f"text3d-edu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
