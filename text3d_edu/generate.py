"""Text → 3D by distillation: the loop that wires a 3D field, a renderer, a camera sampler and a 2D guidance.

    for each step:
        cameras ~ random viewpoints                       (cameras.sample_cameras)
        x = g(θ, c): render the field from them           (rendering.render_image)
        loss = guidance(x, prompt, camera)                (guidance.sds / guidance.clip_loss)
             + regularisers(opacity)                      (sparsity, opaqueness: no blob, no haze)
        θ ← θ − η ∇_θ loss                               (Adam)

Methods: "clip" (Dream Fields), "sds" (DreamFusion) and "sds-jacobian" (the same with the U-Net Jacobian). After
the loop, ``judge`` renders 8 novel views and asks the pocket CLIP which catalogue caption each one shows, and
``field_fidelity`` compares the views with the prompt's true Pocket World object (``text3d_edu.fidelity``).
The loop shows tqdm progress, checkpoints every ``checkpoint_every`` steps, resumes, and stops on NaN.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from text3d_edu import toyworld
from text3d_edu.cameras import Cameras, sample_cameras
from text3d_edu.fidelity import fidelity, fidelity_cameras, truth_renders
from text3d_edu.fields import GridField
from text3d_edu.guidance.clip_loss import CLIPLossConfig, clip_loss
from text3d_edu.guidance.sds import SDSConfig, sds_loss
from text3d_edu.guidance.view_prompts import view_prompts
from text3d_edu.rendering import render_image
from text3d_edu.shading import ShadedField, sample_shading
from text3d_edu.world_render import render

METHODS = ("sds", "sds-jacobian", "clip")


@dataclass
class GenerateConfig:
    """Options of ``generate``; an unknown option is a TypeError."""

    method: str = "sds"
    steps: int = 500
    seed: int = 0
    view_prompts: bool = True
    resolution: int = 32  # render size (the pocket priors see 32×32)
    grid_resolution: int | None = None  # voxels per side; None: 32 for SDS, 16 for CLIP (lecture 02, section 5)
    cameras_per_step: int = 4
    n_samples: int = 48
    lr: float = 0.05
    elevation_range: tuple[float, float] = (-10.0, 90.0)  # DreamFusion's; "overhead" above 60°
    radius_range: tuple[float, float] = (3.0, 3.5)
    blob_radius: float = 0.5  # the starting density: σ = blob_density · exp(−r² / 2ρ²), ρ = blob_radius
    blob_density: float = 10.0
    shading: tuple[float, float, float] | None = None  # p(albedo, lambertian, textureless) per view; None: albedo
    # the geometry terms of ``regularisers``; None: the method's measured default (benchmarks/sds_ablation.py)
    sparsity_weight: float | None = None  # λ · opacity of each ray (threestudio's lambda_sparsity); SDS 1, CLIP 0
    sparsity_free: float = 0.15  # the share of each image's pixels whose opacity the sparsity term leaves free
    opaque_weight: float | None = None  # λ · binary entropy of each ray's opacity (no haze); SDS 0.1, CLIP 0
    opaque_from: float = 0.0  # the fraction of the steps after which the opaqueness term applies
    tv_weight: float = 0.0  # λ · total variation of the grid
    anneal_t_max: tuple[float, float] | None = None  # (fraction of steps, t_max after it), e.g. (0.5, 0.5)
    sds: SDSConfig = field(default_factory=SDSConfig)
    clip: CLIPLossConfig = field(default_factory=CLIPLossConfig)
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.steps <= 0:
            raise ValueError(f"steps must be a positive number of optimisation steps, got {self.steps}")
        if self.grid_resolution is None:
            self.grid_resolution = 16 if self.method == "clip" else 32
        if self.sparsity_weight is None:
            self.sparsity_weight = 0.0 if self.method == "clip" else 1.0
        if self.opaque_weight is None:
            self.opaque_weight = 0.0 if self.method == "clip" else 0.1
        if self.method == "sds-jacobian":
            self.sds = SDSConfig(**{**asdict(self.sds), "unet_jacobian": True})


def judge_cameras(resolution: int = 32) -> Cameras:
    """8 evenly spaced azimuths offset by 22.5° from the axes, elevation 15°: the novel views we judge (the same
    cameras as ``fidelity.fidelity_cameras``, at the prior's resolution)."""
    return fidelity_cameras(resolution)


@torch.no_grad()
def judge(images: torch.Tensor, prompt: str, clip) -> dict:
    """The pocket CLIP's verdict on renders (B, 3, H, W) of ``prompt``: for each view, the best-matching
    catalogue caption 'a {colour} {kind}'. Returns kind_acc, colour_acc and clip_rprecision (the exact caption
    ranks first), or None figures when the prompt is not a Pocket World caption."""
    captions = toyworld.catalogue_captions()
    best = clip.similarity(images, captions).argmax(dim=-1).tolist()
    try:
        target = toyworld.parse_caption(prompt)
    except ValueError:
        return {"kind_acc": None, "colour_acc": None, "clip_rprecision": None,
                "judged_as": [captions[i] for i in best]}
    kinds = [kind for kind in toyworld.KINDS for _ in toyworld.COLOURS]
    colours = [colour for _ in toyworld.KINDS for colour in toyworld.COLOURS]
    n = len(best)
    return {
        "kind_acc": sum(kinds[i] == target.kind for i in best) / n,
        "colour_acc": sum(colours[i] == target.colour for i in best) / n,
        "clip_rprecision": sum(captions[i] == target.short_caption for i in best) / n,
        "judged_as": [captions[i] for i in best],
    }


def render_views(field_: torch.nn.Module, cameras: Cameras, n_samples: int = 48) -> torch.Tensor:
    """Renders on the Pocket World background, (B, 3, H, W): what the judge and the image outputs see."""
    with torch.no_grad():
        return render_image(field_, cameras, n_samples, toyworld.BACKGROUND)["rgb"].permute(0, 3, 1, 2)


@torch.no_grad()
def field_fidelity(field_: torch.nn.Module, prompt: str, truths=None, n_samples: int = 64) -> dict | None:
    """``fidelity.fidelity`` of a field's renders from ``fidelity_cameras()`` against the prompt's true object."""
    cameras = fidelity_cameras()
    out = render_image(field_, cameras, n_samples, toyworld.BACKGROUND)
    return fidelity(out["rgb"].permute(0, 3, 1, 2), out["opacity"], prompt, cameras, truths)


class _Guidance:
    """The method's loss for a batch of renders, with prompt encodings cached (there are at most 5)."""

    def __init__(self, prompt: str, config: GenerateConfig, prior, clip):
        self.prompt, self.config, self.prior, self.clip = prompt, config, prior, clip
        self._conditions: dict[str, object] = {}
        if config.method == "clip":
            self.text_embedding = clip.encode_text([prompt])
        else:
            self.uncond = prior.encode_unconditional(1)

    def _condition(self, prompts: list[str]):
        for p in set(prompts) - set(self._conditions):
            self._conditions[p] = self.prior.encode_prompt([p])
        from text3d_edu.priors import Conditioning

        return Conditioning.cat([self._conditions[p] for p in prompts])

    def _render(self, field_, cameras: Cameras, background, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Render for the loss; with ``shading``, each view is lit from its own random light (DreamFusion)."""
        c = self.config
        if c.shading is None:
            return render_image(field_, cameras, c.n_samples, background, perturb=True, generator=generator)
        views = []
        for i in range(len(cameras)):
            mode, light = sample_shading(generator, cameras.c2w[i, :3, 3], c.shading)
            views.append(render_image(ShadedField(field_, light, mode), cameras[i], c.n_samples, background,
                                      perturb=True, generator=generator))
        return {key: torch.cat([v[key] for v in views]) for key in ("rgb", "opacity")}

    def __call__(self, field_, cameras: Cameras, generator: torch.Generator, sds_config: SDSConfig
                 ) -> tuple[torch.Tensor, dict]:
        c = self.config
        if c.method == "clip":
            out = self._render(field_, cameras, None, generator)
            loss, info = clip_loss(self.clip, out["rgb"].permute(0, 3, 1, 2), out["opacity"], self.text_embedding,
                                   c.clip, generator)
            return loss, {**info, "opacity": out["opacity"]}
        out = self._render(field_, cameras, toyworld.BACKGROUND, generator)
        prompts = view_prompts(self.prompt, cameras) if c.view_prompts else [self.prompt] * len(cameras)
        loss, info = sds_loss(self.prior, out["rgb"].permute(0, 3, 1, 2), self._condition(prompts), self.uncond,
                              sds_config, generator)
        return loss, {"t_mean": info["t"].float().mean().item(), "opacity": out["opacity"]}


def regularisers(field_: GridField, opacity: torch.Tensor, config: GenerateConfig, opaque: bool = True
                 ) -> torch.Tensor:
    """The geometry terms added to the guidance loss, for opacity (B, H, W): sparsity (the opacity o of each
    ray, beyond ``sparsity_free`` of each image's pixels), opaqueness (the binary entropy
    −o log o − (1 − o) log(1 − o), lowest at 0 and 1) and total variation.

    Like the SDS loss, the ray terms are summed over the pixels of each image and averaged over the batch, so that
    λ = 1 asks a pixel to pay for its opacity with about one unit of SDS gradient. Without sparsity, SDS with the
    pocket prior at ω = 30 fills the frame (the prior's own samples at that ω do); with it, a pixel stays covered
    only where the prior asks for it (lecture 03, ``benchmarks/sds_ablation.py``)."""
    loss = torch.zeros(())
    batch = opacity.shape[0]
    if config.sparsity_weight:
        free = config.sparsity_free * opacity[0].numel()  # pixels' worth of opacity each image may use for free
        covered = opacity.flatten(1).sum(dim=1)  # (B,)
        loss = loss + config.sparsity_weight * (covered - free).clamp_min(0).sum() / batch
    if config.opaque_weight and opaque:
        o = opacity.clamp(1e-4, 1 - 1e-4)
        loss = loss + config.opaque_weight * (-(o * o.log() + (1 - o) * (1 - o).log())).sum() / batch
    if config.tv_weight:
        loss = loss + config.tv_weight * field_.total_variation()
    return loss


def generate(prompt: str, out_dir: str | Path | None = None, config: GenerateConfig | None = None, prior=None,
             clip=None, resume: bool = False, progress: bool = True) -> tuple[GridField, dict]:
    """Optimise a ``GridField`` so that its renders match ``prompt``; returns (field, metrics).

    ``prior`` / ``clip`` default to the pocket priors. With ``out_dir``, writes ``views.png`` (8 novel views),
    ``turntable.gif``, ``mesh.glb``, ``metrics.json`` and ``checkpoint.pt``; ``resume`` continues from the
    checkpoint. An existing result is never overwritten without ``resume``.
    """
    from text3d_edu.priors import load_clip, load_diffusion

    config = config or GenerateConfig()
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: give a caption such as 'a red mug'")
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.pt" if out else None
    if out and not resume and (out / "metrics.json").exists():
        raise ValueError(f"{out} already holds a result; pass resume=True (--resume) or choose another output")
    clip = clip or load_clip("pocket")
    if config.method != "clip":
        prior = prior or load_diffusion("pocket")

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    field_ = GridField(config.grid_resolution, init="blob", blob_radius=config.blob_radius,
                       blob_density=config.blob_density)
    optimiser = torch.optim.Adam(field_.parameters(), lr=config.lr)
    guidance = _Guidance(prompt, config, prior, clip)
    try:
        truths = truth_renders(prompt, fidelity_cameras())
    except ValueError:  # not a Pocket World caption: no ground truth to compare with
        truths = None
    initial = judge(render_views(field_, judge_cameras(config.resolution)), prompt, clip)
    initial["fidelity"] = field_fidelity(field_, prompt, truths) if truths else None
    start_step, seconds = 0, 0.0
    if resume and checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        field_.load_state_dict(state["field"])
        optimiser.load_state_dict(state["optimiser"])
        generator.set_state(state["generator"])
        start_step, seconds, initial = state["step"], state["seconds"], state["initial"]

    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, disable=not progress,
               desc=f"{config.method}: {prompt}")
    for step in bar:
        tick = time.perf_counter()
        cameras = sample_cameras(config.cameras_per_step, generator, elevation_range=config.elevation_range,
                                 radius_range=config.radius_range, resolution=config.resolution)
        sds_config = config.sds
        if config.anneal_t_max and step >= config.anneal_t_max[0] * config.steps:
            sds_config = SDSConfig(**{**asdict(config.sds), "t_range": (config.sds.t_range[0],
                                                                          config.anneal_t_max[1])})
        loss, info = guidance(field_, cameras, generator, sds_config)
        loss = loss + regularisers(field_, info["opacity"], config, opaque=step >= config.opaque_from * config.steps)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate "
                                     f"(now {config.lr}) or the guidance weight")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        seconds += time.perf_counter() - tick
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"field": field_.state_dict(), "optimiser": optimiser.state_dict(), "step": step + 1,
                        "generator": generator.get_state(), "seconds": seconds, "initial": initial}, checkpoint)

    views = render_views(field_, judge_cameras(config.resolution))
    verdict = judge(views, prompt, clip)
    truth = field_fidelity(field_, prompt, truths) if truths else None
    metrics = {"prompt": prompt, "method": config.method, "representation": "grid",
               "view_prompts": config.view_prompts, "steps": config.steps, "seconds": round(seconds, 1),
               "seconds_per_step": round(seconds / config.steps, 4),  # ``seconds`` sums every run, resumed or not
               **{k: verdict[k] for k in ("kind_acc", "colour_acc", "clip_rprecision")},
               **{f"initial_{k}": initial[k] for k in ("kind_acc", "colour_acc", "clip_rprecision")},
               **(truth or {}),
               **{f"initial_{k}": v for k, v in (initial.get("fidelity") or {}).items()},
               "judged_as": verdict["judged_as"]}
    if out:
        _write_outputs(field_, views, metrics, out, config)
    return field_, metrics


def _write_outputs(field_, views: torch.Tensor, metrics: dict, out: Path, config: GenerateConfig) -> None:
    from text3d_edu import mesh, viz

    out.mkdir(parents=True, exist_ok=True)
    images, titles = views.permute(0, 2, 3, 1), [f"judged: {j.removeprefix('a ')}" for j in metrics["judged_as"]]
    if "silhouette_iou" in metrics:  # a Pocket World caption: its true object on top, from the same cameras
        truth = render(toyworld.parse_caption(metrics["prompt"]), judge_cameras(config.resolution))["rgb"]
        images, titles = torch.cat([truth, images]), ["truth"] * len(truth) + titles
    viz.image_grid(images, ncols=8, titles=titles, path=out / "views.png", scale=1.3)
    viz.turntable_gif(lambda cams: render_views(field_, cams).permute(0, 2, 3, 1), out / "turntable.gif",
                      resolution=64)
    try:
        mesh.export(mesh.field_to_mesh(field_, resolution=64, threshold=10.0), out / "mesh.glb")
    except ValueError as err:  # an empty field has no surface: say so in the metrics rather than crash
        metrics["mesh_error"] = str(err)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
