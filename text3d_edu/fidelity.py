"""Ground-truth fidelity: does a generated 3D object look like the Pocket World object its prompt names?

A CLIP judge that reads 32×32 renders is lenient: a frame-filling green blob is "a green table" to it. The Pocket
World can do what no text-to-3D benchmark can, because every prompt has a true 3D object (``parse_caption``). We
render that object from the same cameras as the generated one and compare, pixel by pixel:

- ``silhouette_iou``: |S ∩ S*| / |S ∪ S*| of the opaque silhouettes (opacity > 0.5) over all views. A prompt
  does not fix which way the object faces (unless view prompts do), so the truth is also rendered turned by
  90°, 180° and 270° and the best offset counts (``best_offset``);
- ``frame_share`` (and ``truth_frame_share``): the share of the frame the silhouette covers;
- ``skirt_share``: of the visible pixels (opacity > 0.1), the share that is semi-transparent (opacity < 0.9):
  the pale see-through haze distillation leaves around objects. The truth's figure (``truth_skirt_share``)
  is its anti-aliased edge;
- ``colour_error``: the mean absolute difference, over the pixels both silhouettes cover, between the rendered
  colour and the true albedo (unshaded), in [0, 1] per channel.

Every method's ``metrics.json`` reports these beside the starting point's figures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from text3d_edu import toyworld
from text3d_edu.cameras import Cameras, orbit_cameras
from text3d_edu.world_render import render

AZIMUTH_OFFSETS = (0.0, 90.0, 180.0, 270.0)
OPAQUE, VISIBLE = 0.5, 0.1


def fidelity_cameras(resolution: int = 64) -> Cameras:
    """The judge's 8 novel views (azimuth 22.5° + k·45°, elevation 15°, radius 3.2) at a finer resolution."""
    return orbit_cameras(22.5 + torch.arange(8) * 45.0, 15.0, 3.2, resolution=resolution)


def turned(cameras: Cameras, offset: float) -> Cameras:
    """The same cameras moved by ``offset`` degrees of azimuth: viewing the object turned by −offset."""
    return orbit_cameras(cameras.azimuth + offset, cameras.elevation, cameras.radius, cameras.fov_degrees,
                         cameras.resolution)


@torch.no_grad()
def truth_renders(prompt: str, cameras: Cameras) -> list[dict[str, Tensor]]:
    """The prompt's true object seen from ``cameras`` turned by each of ``AZIMUTH_OFFSETS``.

    Raises ValueError when ``prompt`` is not a Pocket World caption."""
    obj = toyworld.parse_caption(prompt)
    return [render(obj, turned(cameras, offset)) for offset in AZIMUTH_OFFSETS]


def compare(rgb: Tensor, opacity: Tensor, truth: dict[str, Tensor]) -> dict[str, float]:
    """Fidelity figures of renders rgb (B, 3, H, W), opacity (B, H, W) against one truth render."""
    mask, true_mask = opacity > OPAQUE, truth["alpha"] > OPAQUE
    union = (mask | true_mask).sum().clamp_min(1)
    overlap = mask & true_mask
    visible = opacity > VISIBLE
    true_visible = truth["alpha"] > VISIBLE
    colour_error = ((rgb.permute(0, 2, 3, 1) - truth["albedo"]).abs().mean(-1)[overlap].mean()
                    if overlap.any() else torch.tensor(1.0))
    return {
        "silhouette_iou": (overlap.sum() / union).item(),
        "frame_share": mask.float().mean().item(),
        "truth_frame_share": true_mask.float().mean().item(),
        "skirt_share": ((visible & (opacity < 1 - VISIBLE)).sum() / visible.sum().clamp_min(1)).item(),
        "truth_skirt_share": ((true_visible & (truth["alpha"] < 1 - VISIBLE)).sum()
                              / true_visible.sum().clamp_min(1)).item(),
        "colour_error": colour_error.item(),
    }


def fidelity(rgb: Tensor, opacity: Tensor, prompt: str, cameras: Cameras,
             truths: list[dict[str, Tensor]] | None = None) -> dict[str, float] | None:
    """Ground-truth fidelity of renders rgb (B, 3, H, W) in [0, 1] and opacity (B, H, W) made from ``cameras``.

    Returns the figures of ``compare`` at the azimuth offset with the best silhouette IoU, plus ``best_offset``
    (degrees), rounded to 3 decimals; None when ``prompt`` is not a Pocket World caption. Pass ``truths`` (from
    ``truth_renders``) to reuse the true renders across calls.
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3 or opacity.shape != (rgb.shape[0], *rgb.shape[2:]):
        raise ValueError(f"expected rgb (B, 3, H, W) and opacity (B, H, W), got {tuple(rgb.shape)} and "
                         f"{tuple(opacity.shape)}")
    try:
        truths = truths or truth_renders(prompt, cameras)
    except ValueError:
        return None
    scores = [compare(rgb, opacity, truth) for truth in truths]
    best = max(range(len(scores)), key=lambda i: scores[i]["silhouette_iou"])
    return {**{k: round(v, 3) for k, v in scores[best].items()}, "best_offset": AZIMUTH_OFFSETS[best]}
