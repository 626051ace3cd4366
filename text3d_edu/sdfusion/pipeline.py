"""SDFusion's uses, wired from its pieces (``vqvae``, ``unet``, ``sampler``, ``data``): text → shape, image → shape,
shape completion from a half-shape, any mix of them (multi-modal guidance), the judge's figures, and
``text3d-edu generate PROMPT --method sdfusion``.

A latent z of the VQ-VAE is standardised, (z − μ) / σ (``VQVAE.latent_mean`` / ``latent_std``), before the diffusion
sees it, and mapped back before decoding. Shapes come out uncoloured (SDFusion generates geometry only);
``generate_sdfusion`` paints them with the rule in ``colour_grid``: the prompt's colour (``toyworld.COLOURS``)
everywhere.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu import toyworld
from text3d_edu.sdfusion.data import GRID, HALVES, form_grids, half_mask, judge_kind, occupancy_iou
from text3d_edu.sdfusion.sampler import ddim_sample
from text3d_edu.sdfusion.unet import LatentUNet
from text3d_edu.sdfusion.vqvae import TRUNCATION, VQVAE

WEIGHTS = {"vqvae": "sdfusion_vqvae.safetensors", "unet": "sdfusion_unet.safetensors"}
STATS_FILE = "sdfusion.json"
EVAL_COLOURS = ("red", "blue")  # the acceptance prompts: every kind in these two colours


@dataclass
class SampleConfig:
    """The sampler's settings: DDIM steps and each condition's guidance weight s_i."""

    steps: int = 50
    scales: dict[str, float] = field(default_factory=lambda: {"text": 3.0, "image": 3.0, "partial": 1.0})


# --- latents and conditions ----------------------------------------------------------------------------------


@torch.no_grad()
def encode(vqvae: VQVAE, sdf: Tensor, batch: int = 64) -> Tensor:
    """Standardised latents (z − μ) / σ of SDF grids (N, R, R, R) → (N, 3, R/4, R/4, R/4)."""
    z = torch.cat([vqvae.encode(chunk) for chunk in sdf.split(batch)])
    return (z - vqvae.latent_mean) / vqvae.latent_std


@torch.no_grad()
def decode(vqvae: VQVAE, z: Tensor) -> Tensor:
    """Standardised latents (N, 3, d, d, d) → SDF grids (N, R, R, R) (z = σ·latent + μ quantised, then decoded)."""
    return vqvae.decode(z * vqvae.latent_std + vqvae.latent_mean)


def partial_sdf(sdf: Tensor, keep: str) -> Tensor:
    """The half-shape: the SDF (…, R, R, R) on the half ``keep``, empty space (+δ) elsewhere."""
    return torch.where(half_mask(keep, sdf.shape[-1]), sdf, torch.full_like(sdf, TRUNCATION))


def partial_condition(vqvae: VQVAE, sdf: Tensor, keep: str) -> tuple[Tensor, Tensor, Tensor]:
    """The partial-shape condition of SDF grids (B, R, R, R) cut to the half ``keep``: (the condition
    (B, 4, d, d, d) = the half-shape's standardised latent on the kept half and the mask m, the known latent
    (B, 3, d, d, d), the latent cells DDIM keeps (1, 1, d, d, d): m without its layer of cells at the cut, whose
    latent the missing half would change)."""
    known = encode(vqvae, partial_sdf(sdf, keep))
    d = known.shape[-1]
    mask = half_mask(keep, d).float()[None, None]  # (1, 1, d, d, d)
    axis, upper = HALVES[keep]
    cut = d // 2 if upper else d // 2 - 1  # the kept layer next to the cut
    inner = mask.clone()
    inner.select(2 + axis, cut).zero_()
    condition = torch.cat([known * mask, mask.expand(known.shape[0], -1, -1, -1, -1)], dim=1)
    return condition, known, inner


def text_condition(clip, prompts: list[str]) -> Tensor:
    """The pocket CLIP's unit-norm text features (B, E) of prompts; a word it never saw is a ValueError."""
    from text3d_edu.dreamstone import text_features

    return torch.cat([text_features(clip, p) for p in prompts])


@torch.no_grad()
def image_condition(clip, images: Tensor) -> Tensor:
    """The pocket CLIP's unit-norm image features (B, E) of renders (B, 3, H, W) in [0, 1]."""
    return F.normalize(clip.encode_image(images), dim=-1)


@torch.no_grad()
def sample_shapes(vqvae: VQVAE, unet: LatentUNet, conditions: dict[str, Tensor], config: SampleConfig | None = None,
                  seed: int = 0, completion: tuple[Tensor, Tensor] | None = None, n: int | None = None) -> Tensor:
    """SDF grids (B, R, R, R) sampled under ``conditions`` (names of ``unet.CONDITIONS`` → (B, …)), each weighted by
    ``config.scales``; ``completion`` = (known latent, kept cells) from ``partial_condition`` runs DDIM with the
    known region. B comes from the conditions, or ``n`` when there are none."""
    config = config or SampleConfig()
    b = next(iter(conditions.values())).shape[0] if conditions else n
    d = vqvae.config.grid // 4
    shape = (b, unet.config.latent_channels, d, d, d)
    known, mask = completion if completion is not None else (None, None)
    z = ddim_sample(unet, shape, conditions, {k: config.scales[k] for k in conditions}, config.steps,
                    torch.Generator().manual_seed(seed), known, mask)
    return decode(vqvae, z)


def complete(vqvae: VQVAE, unet: LatentUNet, sdf: Tensor, keep: str, config: SampleConfig | None = None,
             seed: int = 0, conditions: dict[str, Tensor] | None = None) -> Tensor:
    """Shape completion: the half ``keep`` of SDF grids (B, R, R, R) → complete SDF grids (B, R, R, R) (DDIM with the
    known region, guided by the partial shape and any other ``conditions``, e.g. {"text": (B, E)}); the known
    half's voxels are the input's."""
    condition, known, inner = partial_condition(vqvae, sdf, keep)
    conditions = {"partial": condition, **(conditions or {})}
    out = sample_shapes(vqvae, unet, conditions, config, seed, completion=(known, inner))
    return torch.where(half_mask(keep, sdf.shape[-1]), sdf, out)


def colour_grid(prompt_colour: str, resolution: int = GRID) -> Tensor:
    """The colouring rule (SDFusion's shapes have no colour): the prompt's colour from ``toyworld.COLOURS``
    everywhere → (3, R, R, R); grey (0.6) when the prompt names none."""
    rgb = torch.tensor(toyworld.COLOURS.get(prompt_colour, (0.6, 0.6, 0.6)))
    return rgb[:, None, None, None].expand(3, resolution, resolution, resolution).clone()


# --- measuring -----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(vqvae: VQVAE, unet: LatentUNet, clip, heldout: dict, config: SampleConfig | None = None,
             seed: int = 0, prompts: list[str] | None = None, completions: int | None = None) -> dict:
    """The acceptance figures on held-out data (``data.sdf_dataset(held_out=True)``):

    - vqvae_iou: mean occupancy IoU of the held-out grids with their VQ-VAE reconstructions;
    - text_kind_acc: text → shape on ``prompts`` (every kind in ``EVAL_COLOURS``), one sample each, judged by
      ``data.judge_kind`` (nearest catalogue kind in any form by occupancy IoU);
    - completion_iou: mean IoU with the true shape of the first ``completions`` held-out objects (all by default)
      completed from a half (the halves in turn: left, right, bottom, …);
    - sample_seconds: one text → shape sample (B = 1) on this CPU."""
    sdf = heldout["sdf"]
    reconstructions = torch.cat([decode(vqvae, encode(vqvae, chunk)) for chunk in sdf.split(32)])
    vqvae_iou = sum(occupancy_iou(r, s) for r, s in zip(reconstructions, sdf)) / len(sdf)
    prompts = prompts or [toyworld.with_article(f"{c} {k}") for k in toyworld.KINDS for c in EVAL_COLOURS]
    shapes = sample_shapes(vqvae, unet, {"text": text_condition(clip, prompts)}, config, seed)
    grids = form_grids(shapes.shape[-1])
    judged = [judge_kind(s, grids)[0] for s in shapes]
    truth = [toyworld.parse_caption(p).kind for p in prompts]
    n = len(sdf) if completions is None else completions
    halves = list(HALVES)
    ious = []
    for i in range(n):
        completed = complete(vqvae, unet, sdf[i:i + 1], halves[i % len(halves)], config, seed)
        ious.append(occupancy_iou(completed[0], sdf[i]))
    started = time.perf_counter()
    sample_shapes(vqvae, unet, {"text": text_condition(clip, prompts[:1])}, config, seed)
    seconds = time.perf_counter() - started
    return {"vqvae_iou": round(vqvae_iou, 3),
            "text_kind_acc": round(sum(j == t for j, t in zip(judged, truth)) / len(prompts), 3),
            "completion_iou": round(sum(ious) / len(ious), 3), "sample_seconds": round(seconds, 2),
            "prompts": len(prompts), "completions": n,
            "judged": {p: j for p, j in zip(prompts, judged)}}


# --- text3d-edu generate --method sdfusion -------------------------------------------------------------------


def prompt_colour(prompt: str) -> str:
    """The first Pocket World colour word of a prompt ("" when it names none)."""
    return next((w for w in prompt.lower().replace(",", " ").split() if w in toyworld.COLOURS), "")


def load_image(path: str | Path, size: int = 32) -> Tensor:
    """An image file as (1, 3, size, size) in [0, 1] (RGB, resized with antialiasing); a clear error when it cannot
    be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    except (FileNotFoundError, UnidentifiedImageError) as err:
        raise ValueError(f"--image {path}: not a readable image ({err})") from err
    return torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(1, 3, size, size) / 255


def generate_sdfusion(prompt: str, out_dir: str | Path | None = None, config: SampleConfig | None = None,
                      seed: int = 0, partial: str | None = None, keep: str = "left",
                      image: str | Path | None = None, clip=None, weights_dir: str | Path | None = None) -> tuple:
    """``text3d-edu generate PROMPT --method sdfusion [--partial CAPTION --keep HALF] [--image PNG]``: one shape
    sampled with the prompt's text features, and, if given, the half ``keep`` of the Pocket World object
    ``partial`` (a caption; completion: DDIM with the known region) and a picture's image features, combined by
    the multi-modal guidance with ``config.scales``. Coloured by ``colour_grid`` (the prompt's colour).

    With ``out_dir``, writes what every grid method writes (views.png under the truth, turntable.gif, mesh.glb,
    metrics.json and checkpoint.pt, which ``text3d-edu render`` re-renders). Returns (the grid field, metrics)."""
    from text3d_edu.dreamstone import shape_to_field
    from text3d_edu.fidelity import fidelity_cameras, truth_renders
    from text3d_edu.generate import field_fidelity, judge, judge_cameras, render_views, write_outputs
    from text3d_edu.priors import load_clip
    from text3d_edu.sdfusion.train import load_sdfusion
    from text3d_edu.world_render import sdf_grid

    config = config or SampleConfig()
    out = Path(out_dir) if out_dir is not None else None
    if out and (out / "metrics.json").exists():
        raise ValueError(f"{out} already holds a result: choose another output (SDFusion has nothing to resume)")
    clip = clip or load_clip("pocket")
    conditions = {"text": text_condition(clip, [prompt])}  # a bad prompt fails before the weights load
    if image is not None:
        conditions["image"] = image_condition(clip, load_image(image, clip.image_size))
    known = None
    if partial is not None:
        half_mask(keep)  # an unknown half fails here
        known = toyworld.parse_caption(partial)  # an unknown caption fails here
    vqvae, unet = load_sdfusion(weights_dir)
    if known is not None:
        known = sdf_grid(known, vqvae.config.grid).clamp(-TRUNCATION, TRUNCATION)[None]  # (1, R, R, R)
    tick = time.perf_counter()
    if known is None:
        sdf = sample_shapes(vqvae, unet, conditions, config, seed)[0]
    else:
        sdf = complete(vqvae, unet, known, keep, config, seed, conditions)[0]
    seconds = time.perf_counter() - tick
    colour = prompt_colour(prompt)
    field_ = shape_to_field(sdf, colour_grid(colour, sdf.shape[-1]))
    views = render_views(field_, judge_cameras(32))  # (8, 3, 32, 32)
    kind, iou = judge_kind(sdf, form_grids(sdf.shape[-1]))
    metrics = {"prompt": prompt, "method": "sdfusion", "representation": "grid", "seed": seed,
               "config": asdict(config), "steps": config.steps, "seconds": round(seconds, 2),
               "conditions": {"text": prompt, "image": str(image) if image is not None else None,
                              "partial": {"caption": partial, "keep": keep} if partial is not None else None},
               "colour_rule": f"the prompt's colour {colour or 'none: grey'} everywhere",
               "shape": {"kind": kind, "iou": round(iou, 3)}, **judge(views, prompt, clip)}
    if known is not None:
        metrics["shape"]["iou_with_partial_object"] = round(occupancy_iou(sdf, known[0]), 3)
    try:
        toyworld.parse_caption(prompt)
    except ValueError:  # not a Pocket World caption: the judge's figures only
        pass
    else:
        metrics.update(field_fidelity(field_, prompt, truth_renders(prompt, fidelity_cameras())))
    if out:
        write_outputs(field_, views, metrics, out)
        torch.save({"field": field_.state_dict()}, out / "checkpoint.pt")  # a grid result
    return field_, metrics
