"""Training and held-out data for the pocket priors: Pocket World renders at 32×32 with captions.

Objects cycle through every kind × colour (so each pair is equally frequent), with a random form and jittered
proportions; each is rendered from random viewpoints (azimuth U(−180°, 180°), elevation U(−10°, 75°) so that
DreamFusion's "overhead" label occurs). A training caption is, at random, the full caption ("a tall red mug")
or the short one ("a red mug"), and half of the captions get the view suffix of ``cameras.view_label``
(", front view" / ", side view" / ", back view" / ", overhead view"). The bare prompt therefore means "any
view": lecture 06 reproduces the Janus problem with it, and fixes it with the suffixes.

Held-out sets use other object seeds and other camera draws than training. Renders are generated, never
committed; ``render_dataset`` caches them in a (gitignored) folder.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from text3d_edu.cameras import sample_cameras, view_label
from text3d_edu.toyworld import COLOURS, FORMS, KINDS, PocketObject, make_object

RESOLUTION = 32
ELEVATION_RANGE = (-10.0, 75.0)
RADIUS_RANGE = (3.0, 3.6)
HELD_OUT_SEED_OFFSET = 1_000_000  # held-out objects and cameras never share a seed with training ones
DATA_VERSION = 2
"""Bumped whenever what a render or its caption holds changes (2: 'an orange duck'), so a stale cache is not read."""


def view_suffix(label: str) -> str:
    """DreamFusion's view-dependent prompt suffix: 'front' → ', front view'."""
    return f", {label} view"


def dataset_offset(seed: int, held_out: bool = False) -> int:
    """The seed offset of a data set's objects and cameras (held-out objects never share one with training's)."""
    return seed * 100_003 + (HELD_OUT_SEED_OFFSET if held_out else 0)


def dataset_object(i: int, offset: int) -> PocketObject:
    """Object ``i`` of a data set: kind and colour cycle through the catalogue; form and jitter seeded by offset + i."""
    kinds, colours, forms = list(KINDS), list(COLOURS), list(FORMS)
    rng = random.Random(offset + i)
    kind, colour = kinds[i % len(kinds)], colours[(i // len(kinds)) % len(colours)]
    form = rng.choice(forms[1:]) if rng.random() < 0.4 else ""
    return make_object(kind, colour, form, seed=offset + i + 1)


def _render_object(i: int, offset: int, resolution: int = RESOLUTION) -> dict:
    """Object ``i`` of a data set (``dataset_object``) from random cameras seeded by offset + i."""
    from text3d_edu.world_render import render

    kinds, colours = list(KINDS), list(COLOURS)
    obj = dataset_object(i, offset)
    kind, colour = obj.kind, obj.colour
    cams = sample_cameras(_VIEWS[0], torch.Generator().manual_seed(offset + i), elevation_range=ELEVATION_RANGE,
                          radius_range=RADIUS_RANGE, resolution=resolution)
    rgb = render(obj, cams)["rgb"]  # (V, resolution, resolution, 3)
    return {"index": i, "images": (rgb.permute(0, 3, 1, 2) * 255).round().to(torch.uint8), "kind": kinds.index(kind),
            "colour": colours.index(colour), "caption": obj.caption, "short_caption": obj.short_caption,
            "view": [view_label(a, e) for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist())]}


_VIEWS = [12]  # views per object, set by render_dataset (also in worker processes, through _init_worker)


def _init_worker(views: int) -> None:
    torch.set_num_threads(1)
    _VIEWS[0] = views


def _render_chunk(args: tuple[list[int], int, int]) -> list[dict]:
    indices, offset, resolution = args
    return [_render_object(i, offset, resolution) for i in indices]


def render_dataset(n_objects: int, views_per_object: int, seed: int = 0, held_out: bool = False,
                   cache_dir: str | Path | None = None, progress: bool = False, workers: int = 1,
                   resolution: int = RESOLUTION) -> dict:
    """Render ``n_objects`` × ``views_per_object`` images of balanced kinds × colours.

    Returns {"images": uint8 (N, 3, R, R) (R = ``resolution``, 32 by default; the pocket LDM uses 64),
    "kind": long (N,), "colour": long (N,), "caption": list[str] (N,)
    full captions, "short_caption": list[str] (N,), "view": list[str] (N,) view labels}, N = n_objects·views.
    Deterministic in (n_objects, views_per_object, seed, held_out) whatever the number of ``workers``
    (processes); cached as a .pt file in ``cache_dir``.
    """
    name = (f"pocket_{'heldout' if held_out else 'train'}_{n_objects}x{views_per_object}_s{seed}_r{resolution}"
            f"_v{DATA_VERSION}.pt")
    if cache_dir is not None and (Path(cache_dir) / name).exists():
        return torch.load(Path(cache_dir) / name)
    offset = dataset_offset(seed, held_out)
    if workers > 1:
        chunks = [(list(range(k, n_objects, 8 * workers)), offset, resolution) for k in range(8 * workers)]
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (views_per_object,)) as pool:
            rendered = pool.imap(_render_chunk, chunks)  # in order: chunk k is objects k, k + 8·workers, …
            rendered = tqdm(rendered, total=len(chunks), desc="rendering the Pocket World", unit="chunk",
                            disable=not progress)
            objects = [o for chunk in rendered for o in chunk]
    else:
        _VIEWS[0] = views_per_object
        indices = tqdm(range(n_objects), desc="rendering the Pocket World", mininterval=10, disable=not progress)
        objects = [_render_object(i, offset, resolution) for i in indices]
    objects.sort(key=lambda o: o["index"])  # the interleaved chunks come back chunk by chunk
    data = {
        "images": torch.cat([o["images"] for o in objects]),
        "kind": torch.tensor([o["kind"] for o in objects]).repeat_interleave(views_per_object),
        "colour": torch.tensor([o["colour"] for o in objects]).repeat_interleave(views_per_object),
        "caption": [o["caption"] for o in objects for _ in range(views_per_object)],
        "short_caption": [o["short_caption"] for o in objects for _ in range(views_per_object)],
        "view": [v for o in objects for v in o["view"]],
    }
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        torch.save(data, Path(cache_dir) / name)
    return data


def sample_captions(data: dict, index: Tensor, generator: torch.Generator, suffix_probability: float = 0.5,
                    drop_probability: float = 0.0) -> list[str]:
    """Training captions for the images ``index`` (B,): full or short caption (½ each), a view suffix with
    ``suffix_probability``, and "" (the unconditional branch) with ``drop_probability``."""
    u = torch.rand(len(index), 3, generator=generator)
    captions = []
    for (full, with_suffix, drop), i in zip(u.tolist(), index.tolist()):
        if drop < drop_probability:
            captions.append("")
            continue
        caption = data["caption"][i] if full < 0.5 else data["short_caption"][i]
        captions.append(caption + view_suffix(data["view"][i]) if with_suffix < suffix_probability else caption)
    return captions


def _gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Per-image 3×3 Gaussian blur: images (B, 3, H, W), sigma (B,) → (B, 3, H, W)."""
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))  # (B, 3)
    k1 = k1 / k1.sum(-1, keepdim=True)
    kernel = k1[:, :, None] * k1[:, None, :]  # (B, 3, 3)
    b, c, h, w = images.shape
    weight = kernel.repeat_interleave(c, dim=0)[:, None]  # (B·C, 1, 3, 3)
    out = F.conv2d(F.pad(images.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="replicate"), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def augment(images: Tensor, generator: torch.Generator, clean_fraction: float = 0.1) -> Tensor:
    """The CLIP's augmentation, so it judges slightly noisy renders and diffusion samples fairly.

    images (B, 3, H, W) in [0, 1] → (B, 3, H, W): a small shift and zoom, a brightness / tint change of a few
    per cent (small enough that red stays red and orange orange), blur (σ ≤ 1 px) for a third, pixel noise
    (σ ≤ 0.08) and low-frequency grain (σ ≤ 0.05); ``clean_fraction`` of the images are left untouched.
    """
    b = images.shape[0]
    u = torch.rand(b, 8, generator=generator)
    # shift ±2 px and zoom 0.92–1.08 through an affine grid (replicate the border: the background is uniform)
    scale = 0.92 + 0.16 * u[:, 0]
    shift = (u[:, 1:3] - 0.5) * (4.0 / images.shape[-1]) * 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / scale, 1 / scale, shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    tint = 1 + 0.05 * (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1)
    brightness = 1 + 0.1 * (u[:, 3] * 2 - 1)
    out = out * tint * brightness.reshape(b, 1, 1, 1)
    blurred = _gaussian_blur(out, 0.3 + 0.7 * u[:, 4])
    out = torch.where((u[:, 5] < 1 / 3).reshape(b, 1, 1, 1), blurred, out)
    out = out + 0.08 * u[:, 6].reshape(b, 1, 1, 1) * torch.randn(out.shape, generator=generator)
    grain = F.interpolate(torch.randn(b, 3, 8, 8, generator=generator), size=images.shape[-2:], mode="bilinear")
    out = out + 0.05 * u[:, 7].reshape(b, 1, 1, 1) * grain
    clean = (torch.rand(b, generator=generator) < clean_fraction).reshape(b, 1, 1, 1)
    return torch.where(clean, images, out.clamp(0, 1))
