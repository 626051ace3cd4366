"""SDFusion's data on the Pocket World: truncated SDF grids (32³) of the objects, with what each condition needs —
a caption (text), a render's pocket-CLIP image features (image) and half-shapes (partial shape) — and the judge that
names a shape's kind.

The grids, renders and image features come from ``dreamstone.shape_dataset`` at R = 32 (deterministic, cached);
this file adds the captions, the half-shape masks and the judge.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from text3d_edu import toyworld
from text3d_edu.dreamstone import nearest_kind, shape_dataset
from text3d_edu.priors import data as pocket_data
from text3d_edu.world_render import sdf_grid

GRID = 32  # R: the SDF grids are R³ over [−1, 1]³
VIEWS_PER_OBJECT = 4  # renders per object, for the image condition
# the half of [−1, 1]³ a partial shape keeps: (axis of the [x, y, z] grid, True for the upper half); y is up and
# the objects face +z
HALVES = {"left": (0, False), "right": (0, True), "bottom": (1, False), "top": (1, True), "back": (2, False),
          "front": (2, True)}


def caption(obj: toyworld.PocketObject) -> str:
    """The text condition of an object: 'a [form] <colour> <kind>' ('a tall red table', 'a red cube stack')."""
    return toyworld.with_article(" ".join(w for w in (obj.form, obj.colour, obj.kind) if w))


def sdf_dataset(n_objects: int, seed: int = 0, held_out: bool = False, clip=None,
                cache_dir: str | Path | None = None, workers: int = 1, progress: bool = False) -> dict:
    """``n_objects`` Pocket World objects (``priors.data.dataset_object``) as ``dreamstone.shape_dataset`` builds them
    at R = 32 with 4 renders each — {"sdf": (N, R, R, R) in [−δ, δ], "features": (N, 4, E) pocket-CLIP image
    features, "images", "albedo", "kind", "colour"} — and "captions": N strings (``caption``)."""
    data = shape_dataset(n_objects, VIEWS_PER_OBJECT, GRID, seed, held_out, clip, cache_dir, workers, progress)
    offset = pocket_data.dataset_offset(seed, held_out)
    data["captions"] = [caption(pocket_data.dataset_object(i, offset)) for i in range(n_objects)]
    return data


def half_mask(keep: str, resolution: int = GRID) -> Tensor:
    """The voxels of the half ``keep`` (a key of ``HALVES``): bool (R, R, R), indexed [x, y, z]."""
    if keep not in HALVES:
        raise ValueError(f"unknown half {keep!r}: choose one of {', '.join(HALVES)}")
    axis, upper = HALVES[keep]
    index = torch.arange(resolution) >= resolution // 2
    index = index if upper else ~index
    shape = [1, 1, 1]
    shape[axis] = resolution
    return index.reshape(shape).expand(resolution, resolution, resolution).clone()


def form_grids(resolution: int = GRID) -> dict[str, Tensor]:
    """The canonical occupancy (R, R, R) bool of every kind in every form, keyed '<form> <kind>' (' mug' for the
    plain one): the judge compares a shape with all of them."""
    return {f"{form} {kind}": sdf_grid(toyworld.make_object(kind, "red", form, second_colour="blue"
                                                            if kind == "cube stack" else ""), resolution) < 0
            for kind in toyworld.KINDS for form in toyworld.FORMS}


def judge_kind(sdf: Tensor, grids: dict[str, Tensor]) -> tuple[str, float]:
    """A shape's kind: the kind of the catalogue form with the highest occupancy IoU with it (``nearest_kind`` over
    ``form_grids``): sdf (R, R, R) → (kind, that IoU)."""
    best, iou = nearest_kind(sdf, grids)
    return best.split(" ", 1)[1], iou


def occupancy_iou(sdf: Tensor, true_sdf: Tensor) -> float:
    """IoU of the occupancies (d < 0) of two SDF grids of the same shape (…, R, R, R), over all of them."""
    a, b = sdf < 0, true_sdf < 0
    return ((a & b).sum() / (a | b).sum().clamp_min(1)).item()
