"""Text → 3D by distillation: the loop that wires a 3D field, a renderer, a camera sampler and a 2D guidance.

    for each step:
        cameras ~ random viewpoints                       (cameras.sample_cameras)
        x = g(θ, c): render the field from them           (rendering.render_image)
        loss = guidance(x, prompt, camera)                (guidance.sds / guidance.clip_loss / guidance.vsd)
             + regularisers(opacity)                      (sparsity, opaqueness: no blob, no haze)
        θ ← θ − η ∇_θ loss                               (Adam)
        [VSD only] φ ← φ − η₂ ∇_φ ‖ε_φ(x_t; y, t, c) − ε‖²  (AdamW, on the detached renders)

Methods: "clip" (Dream Fields), "sds" (DreamFusion), "sds-jacobian" (the same with the U-Net Jacobian) and "vsd"
(ProlificDreamer: n particles θ⁽¹⁾…θ⁽ⁿ⁾, each a ``GridField``, and a LoRA ε_φ; ``_generate_vsd``). After the loop,
``judge`` renders 8 novel views and asks the pocket CLIP which catalogue caption each one shows, and
``field_fidelity`` compares the views with the prompt's true Pocket World object (``text3d_edu.fidelity``).
The loop shows tqdm progress, checkpoints every ``checkpoint_every`` steps, resumes, and stops on NaN.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
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
from text3d_edu.guidance.vsd import LoRANoisePredictor, VSDConfig, lora_loss, vsd_loss
from text3d_edu.priors import PromptCache
from text3d_edu.rendering import render_image
from text3d_edu.shading import ShadedField, sample_shading
from text3d_edu.world_render import render

METHODS = ("sds", "sds-jacobian", "clip", "vsd")
REGULARISER_GUIDANCE = 30.0  # the ω at which the regularisers' default λ were measured (benchmarks/sds_ablation.py)


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
    # VSD's defaults are SDS's × ω / 30: its ω is the prior's ordinary one (see __post_init__)
    sparsity_weight: float | None = None  # λ · opacity of each ray (threestudio's lambda_sparsity); SDS 1, CLIP 0
    sparsity_free: float = 0.15  # the share of each image's pixels whose opacity the sparsity term leaves free
    opaque_weight: float | None = None  # λ · binary entropy of each ray's opacity (no haze); SDS 0.3, CLIP 0
    opaque_from: float = 0.5  # the fraction of the steps after which the opaqueness term applies
    tv_weight: float = 0.0  # λ · total variation of the grid
    anneal_t_max: tuple[float, float] | None = None  # (fraction of steps, t_max after it), e.g. (0.5, 0.5)
    sds: SDSConfig = field(default_factory=SDSConfig)
    clip: CLIPLossConfig = field(default_factory=CLIPLossConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)  # the θ step's t_range anneals with anneal_t_max as SDS's
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.steps <= 0:
            raise ValueError(f"steps must be a positive number of optimisation steps, got {self.steps}")
        if self.grid_resolution is None:
            self.grid_resolution = 16 if self.method == "clip" else 32
        # The regularisers' λ are prices in units of the guidance gradient at ω = 30, where SDS needs to run and
        # where they were measured. VSD runs at the prior's ordinary ω (7.5): its guidance gradient is about
        # ω / 30 as strong, so its prices scale by ω / 30 — unscaled, they outweigh it and the object shrinks to a
        # dark ball (measured in guidance/vsd.py's docstring).
        scale = self.vsd.guidance / REGULARISER_GUIDANCE if self.method == "vsd" else 1.0
        if self.sparsity_weight is None:
            self.sparsity_weight = 0.0 if self.method == "clip" else 1.0 * scale
        if self.opaque_weight is None:
            self.opaque_weight = 0.0 if self.method == "clip" else 0.3 * scale
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
    """The method's loss for a batch of renders, with prompt encodings cached (there are at most 5). For VSD it
    holds ε_φ (``eps_phi``) and the plain prompt's condition that ε_φ reads (``lora_cond``)."""

    def __init__(self, prompt: str, config: GenerateConfig, prior, clip):
        self.prompt, self.config, self.prior, self.clip = prompt, config, prior, clip
        self._condition = PromptCache(prior)
        if config.method == "clip":
            self.text_embedding = clip.encode_text([prompt])
        else:
            self.uncond = prior.encode_unconditional(1)
        if config.method == "vsd":
            self.eps_phi = LoRANoisePredictor(prior, config.vsd.lora_rank)
            self.lora_cond = self._condition([prompt])

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

    def __call__(self, field_, cameras: Cameras, generator: torch.Generator, method_config: SDSConfig | VSDConfig
                 ) -> tuple[torch.Tensor, dict]:
        """The loss of renders of ``field_`` from ``cameras``; ``method_config``: the SDS or VSD config of this
        step (its t_range annealed). info: "opacity" (B, H, W) for the regularisers, and for VSD "x" (the detached
        renders in the prior's space) and "c2w" (B, 4, 4) for the φ step."""
        c = self.config
        if c.method == "clip":
            out = self._render(field_, cameras, None, generator)
            loss, info = clip_loss(self.clip, out["rgb"].permute(0, 3, 1, 2), out["opacity"], self.text_embedding,
                                   c.clip, generator)
            return loss, {**info, "opacity": out["opacity"]}
        out = self._render(field_, cameras, toyworld.BACKGROUND, generator)
        prompts = view_prompts(self.prompt, cameras) if c.view_prompts else [self.prompt] * len(cameras)
        if c.method == "vsd":
            loss, info = vsd_loss(self.prior, self.eps_phi, out["rgb"].permute(0, 3, 1, 2), cameras.c2w,
                                  self._condition(prompts), self.uncond, self.lora_cond, method_config, generator)
            return loss, {"t_mean": info["t"].float().mean().item(), "opacity": out["opacity"], "x": info["x"],
                          "c2w": cameras.c2w}
        loss, info = sds_loss(self.prior, out["rgb"].permute(0, 3, 1, 2), self._condition(prompts), self.uncond,
                              method_config, generator)
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


def start_blob(config: GenerateConfig) -> GridField:
    """The starting field: a blob σ = blob_density · exp(−r² / 2ρ²) on a ``grid_resolution``³ grid."""
    return GridField(config.grid_resolution, init="blob", blob_radius=config.blob_radius,
                     blob_density=config.blob_density)


def _start(field_: GridField, prompt: str, clip, config: GenerateConfig) -> tuple[dict | None, dict]:
    """The prompt's true renders (None when it is not a Pocket World caption) and the starting field's figures."""
    try:
        truths = truth_renders(prompt, fidelity_cameras())
    except ValueError:  # not a Pocket World caption: no ground truth to compare with
        truths = None
    initial = judge(render_views(field_, judge_cameras(config.resolution)), prompt, clip)
    initial["fidelity"] = field_fidelity(field_, prompt, truths) if truths else None
    return truths, initial


def _annealed(method_config: SDSConfig | VSDConfig, config: GenerateConfig, step: int) -> SDSConfig | VSDConfig:
    """The method's config at ``step``: t_max lowered to ``anneal_t_max[1]`` after ``anneal_t_max[0]`` of the steps."""
    if config.anneal_t_max and step >= config.anneal_t_max[0] * config.steps:
        return replace(method_config, t_range=(method_config.t_range[0], config.anneal_t_max[1]))
    return method_config


def _field_loss(field_: GridField, guidance: _Guidance, generator: torch.Generator, config: GenerateConfig,
                step: int, method_config) -> tuple[torch.Tensor, dict]:
    """One field's loss at ``step``: renders from fresh random cameras, the guidance, the regularisers; stops on NaN."""
    cameras = sample_cameras(config.cameras_per_step, generator, elevation_range=config.elevation_range,
                             radius_range=config.radius_range, resolution=config.resolution)
    loss, info = guidance(field_, cameras, generator, method_config)
    loss = loss + regularisers(field_, info["opacity"], config, opaque=step >= config.opaque_from * config.steps)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower the learning rate "
                                 f"(now {config.lr}) or the guidance weight")
    return loss, info


def generate(prompt: str, out_dir: str | Path | None = None, config: GenerateConfig | None = None, prior=None,
             clip=None, resume: bool = False, progress: bool = True) -> tuple[GridField, dict]:
    """Optimise a ``GridField`` so that its renders match ``prompt``; returns (field, metrics).

    ``prior`` / ``clip`` default to the pocket priors. With ``out_dir``, writes ``views.png`` (8 novel views),
    ``turntable.gif``, ``mesh.glb``, ``metrics.json`` and ``checkpoint.pt``; ``resume`` continues from the
    checkpoint. An existing result is never overwritten without ``resume``. For ``method="vsd"`` see
    ``_generate_vsd``: it returns the particles' fields as a list.
    """
    from text3d_edu.priors import load_clip, load_diffusion

    config = config or GenerateConfig()
    if not prompt or not prompt.strip():
        raise ValueError("empty prompt: give a caption such as 'a red mug'")
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.pt" if out else None
    if out and not resume and (out / "metrics.json").exists():
        raise ValueError(f"{out} already holds a result; pass resume=True (--resume) or choose another output")
    if config.method == "vsd":
        check_particle_memory(config.vsd.particles, config.grid_resolution)  # before anything is loaded or written
    clip = clip or load_clip("pocket")
    if config.method != "clip":
        prior = prior or load_diffusion("pocket")
    if config.method == "vsd":
        return _generate_vsd(prompt, out, config, prior, clip, resume, progress)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    field_ = start_blob(config)
    optimiser = torch.optim.Adam(field_.parameters(), lr=config.lr)
    guidance = _Guidance(prompt, config, prior, clip)
    truths, initial = _start(field_, prompt, clip, config)
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
        loss, _ = _field_loss(field_, guidance, generator, config, step, _annealed(config.sds, config, step))
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
    metrics = _field_metrics(field_, views, prompt, clip, truths, initial, config, seconds)
    if out:
        write_outputs(field_, views, metrics, out)
    return field_, metrics


def _field_metrics(field_, views: torch.Tensor, prompt: str, clip, truths, initial: dict, config: GenerateConfig,
                   seconds: float) -> dict:
    """metrics.json of one field: the judge's verdict on its ``views``, its fidelity, and the initial figures."""
    verdict = judge(views, prompt, clip)
    truth = field_fidelity(field_, prompt, truths) if truths else None
    return {"prompt": prompt, "method": config.method, "representation": "grid",
            "view_prompts": config.view_prompts, "steps": config.steps, "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / config.steps, 4),  # ``seconds`` sums every run, resumed or not
            **{k: verdict[k] for k in ("kind_acc", "colour_acc", "clip_rprecision")},
            **{f"initial_{k}": initial[k] for k in ("kind_acc", "colour_acc", "clip_rprecision")},
            **(truth or {}),
            **{f"initial_{k}": v for k, v in (initial.get("fidelity") or {}).items()},
            "judged_as": verdict["judged_as"]}


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_particle_memory(particles: int, grid_resolution: int, available: int | None = None) -> int:
    """Raise a ValueError saying how much memory ``particles`` VSD particles of a ``grid_resolution``³
    ``GridField`` need when that is more than 80 % of what is ``available`` (default: ``available_memory()``).

    A particle is 4 values (log σ and 3 colour logits) per vertex, held 5 times in float32: the grid, its gradient,
    Adam's two moments and a copy while the checkpoint is written. Particles are rendered one at a time, so the
    renders' activations do not grow with n. Returns the bytes needed."""
    per_particle = 5 * 4 * grid_resolution**3 * 4
    need = particles * per_particle
    available = available_memory() if available is None else available
    if available is not None and need > 0.8 * available:
        raise ValueError(f"{particles} particles of a {grid_resolution}³ grid need about {need / 2**30:.1f} GiB "
                         f"({per_particle / 2**20:.1f} MiB each: the grid, its gradient, Adam's two moments and a "
                         f"checkpoint copy), but only {available / 2**30:.1f} GiB of memory is available: use at "
                         f"most {max(int(0.8 * available // per_particle), 0)} particles or a smaller grid")
    return need


def _generate_vsd(prompt: str, out: Path | None, config: GenerateConfig, prior, clip, resume: bool,
                  progress: bool) -> tuple[list[GridField], dict]:
    """ProlificDreamer's Algorithm 1 (``guidance.vsd``) on n ``GridField`` particles; returns (fields, metrics).

    Every step renders each particle from its own random cameras and takes its θ step (VSD loss + the same
    regularisers as SDS), then takes ``lora_steps_per_theta_step`` φ steps of ε_φ on all the detached renders.
    With ``out``, each particle's views.png, turntable.gif, mesh.glb, metrics.json and checkpoint.pt (its field)
    go to ``out/particle_K/``; ``out`` holds views.png (the truth and every particle), the top-level metrics.json
    (per-particle figures and their means, under the keys SDS writes) and checkpoint.pt (all particles, ε_φ's
    LoRA and camera MLP, both optimisers and the generator), from which ``resume`` continues exactly.
    """
    n = config.vsd.particles
    checkpoint = out / "checkpoint.pt" if out else None
    torch.manual_seed(config.seed)  # ε_φ's LoRA matrices A are drawn from the global generator
    generator = torch.Generator().manual_seed(config.seed)
    # n identical blobs: the particles part ways through their own cameras, t and ε, and ε_φ pushes them apart
    particles = [start_blob(config) for _ in range(n)]
    optimiser = torch.optim.Adam([p for particle in particles for p in particle.parameters()], lr=config.lr)
    guidance = _Guidance(prompt, config, prior, clip)
    eps_phi = guidance.eps_phi
    lora_optimiser = torch.optim.AdamW(eps_phi.parameters(), lr=config.vsd.lora_lr)
    truths, initial = _start(particles[0], prompt, clip, config)
    start_step, seconds = 0, 0.0
    if resume and checkpoint and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if len(state.get("particles", [])) != n:
            raise ValueError(f"{checkpoint} holds {len(state.get('particles', [])) or 'no'} VSD particles, not {n}: "
                             f"resume with the same --method and --particles, or choose another output")
        for particle, particle_state in zip(particles, state["particles"]):
            particle.load_state_dict(particle_state)
        optimiser.load_state_dict(state["optimiser"])
        eps_phi.load_state_dict(state["lora"])
        lora_optimiser.load_state_dict(state["lora_optimiser"])
        generator.set_state(state["generator"])
        start_step, seconds, initial = state["step"], state["seconds"], state["initial"]

    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, disable=not progress,
               desc=f"vsd ×{n}: {prompt}")
    for step in bar:
        tick = time.perf_counter()
        vsd_config = _annealed(config.vsd, config, step)  # the paper: t_max 0.98 → 0.5
        # θ step (Algorithm 1, lines 3–5), every particle from its own cameras
        optimiser.zero_grad(set_to_none=True)
        renders, cameras_c2w = [], []
        for particle in particles:
            loss, info = _field_loss(particle, guidance, generator, config, step, vsd_config)
            loss.backward()
            renders.append(info["x"])
            cameras_c2w.append(info["c2w"])
        optimiser.step()
        # φ step (line 6): ε_φ learns the noise of the particles' renders, each with its camera
        x, c2w = torch.cat(renders), torch.cat(cameras_c2w)  # (n·B, C, h, w), (n·B, 4, 4)
        for _ in range(config.vsd.lora_steps_per_theta_step):
            phi_loss, _ = lora_loss(prior, eps_phi, x, c2w, guidance.lora_cond, config.vsd, generator)
            if not torch.isfinite(phi_loss):
                raise FloatingPointError(f"ε_φ's loss became {phi_loss.item()} at step {step}: lower lora_lr "
                                         f"(now {config.vsd.lora_lr})")
            lora_optimiser.zero_grad(set_to_none=True)
            phi_loss.backward()
            lora_optimiser.step()
        seconds += time.perf_counter() - tick
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", phi=f"{phi_loss.item():.3f}")
        if checkpoint and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"method": "vsd", "particles": [particle.state_dict() for particle in particles],
                        "optimiser": optimiser.state_dict(), "lora": eps_phi.state_dict(),
                        "lora_optimiser": lora_optimiser.state_dict(), "step": step + 1,
                        "generator": generator.get_state(), "seconds": seconds, "initial": initial}, checkpoint)

    cameras = judge_cameras(config.resolution)
    views = [render_views(particle, cameras) for particle in particles]  # n × (8, 3, H, W)
    per_particle = [_field_metrics(particle, v, prompt, clip, truths, initial, config, seconds)
                    for particle, v in zip(particles, views)]
    shared = ("prompt", "method", "view_prompts", "steps", "seconds", "seconds_per_step")
    figures = [k for k, v in per_particle[0].items()  # the judge's and fidelity's numbers, initial_* included
               if k not in shared and not k.endswith("best_offset") and isinstance(v, (int, float))]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    metrics = {**{k: per_particle[0][k] for k in shared}, "representation": "grid-particles", "particles": n,
               **{k: round(sum(m[k] for m in per_particle) / n, 3) for k in figures},  # means over the particles
               # how different the particles look: mean |Δ colour| between each pair's judge views, in [0, 1]
               "particle_spread": round(sum((views[i] - views[j]).abs().mean().item() for i, j in pairs)
                                        / len(pairs), 4) if pairs else 0.0,
               "judged_as": [caption for m in per_particle for caption in m["judged_as"]],
               "per_particle": per_particle}
    if out:
        for k, (particle, v, m) in enumerate(zip(particles, views, per_particle)):
            (out / f"particle_{k}").mkdir(parents=True, exist_ok=True)
            torch.save({"field": particle.state_dict()}, out / f"particle_{k}" / "checkpoint.pt")  # a grid result
            write_outputs(particle, v, m, out / f"particle_{k}")
        _write_particle_views(views, metrics, out / "views.png")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return particles, metrics


def _write_particle_views(views: list[torch.Tensor], metrics: dict, path: Path) -> None:
    """One row per particle (n × (8, 3, H, W)) under the truth's row, when the prompt has a true object."""
    from text3d_edu import viz

    titles = [f"particle {k}: {m['judged_as'][i].removeprefix('a ')}"
              for k, m in enumerate(metrics["per_particle"]) for i in range(len(views[k]))]
    images, titles = _under_truth(torch.cat(views).permute(0, 2, 3, 1), titles, metrics)
    viz.image_grid(images, ncols=len(views[0]), titles=titles, path=path, scale=1.3)


def _under_truth(images: torch.Tensor, titles: list[str], metrics: dict) -> tuple[torch.Tensor, list[str]]:
    """For a Pocket World caption, its true object's row (the judge's cameras) on top of ``images`` (B, H, W, 3)."""
    if "silhouette_iou" not in metrics:
        return images, titles
    truth = render(toyworld.parse_caption(metrics["prompt"]), judge_cameras(images.shape[1]))["rgb"]
    return torch.cat([truth, images]), ["truth"] * len(truth) + titles


def write_outputs(field_, views: torch.Tensor, metrics: dict, out: Path) -> None:
    """A grid result's files in ``out``: views.png (the judge's ``views`` (8, 3, H, W) under the truth's),
    turntable.gif, mesh.glb and metrics.json."""
    from text3d_edu import mesh, viz

    out.mkdir(parents=True, exist_ok=True)
    images, titles = _under_truth(views.permute(0, 2, 3, 1),
                                  [f"judged: {j.removeprefix('a ')}" for j in metrics["judged_as"]], metrics)
    viz.image_grid(images, ncols=8, titles=titles, path=out / "views.png", scale=1.3)
    viz.turntable_gif(lambda cams: render_views(field_, cams).permute(0, 2, 3, 1), out / "turntable.gif",
                      resolution=64)
    try:
        mesh.export(mesh.field_to_mesh(field_, resolution=64, threshold=10.0), out / "mesh.glb")
    except ValueError as err:  # an empty field has no surface: say so in the metrics rather than crash
        metrics["mesh_error"] = str(err)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
