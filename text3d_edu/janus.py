"""Measuring the Janus problem: does an object show its *front* from behind?

A 2D prior asked for "a red mug" from every camera draws the mug's most typical view — its front — from every
camera, and the optimised object grows several fronts (DreamFusion §3.2; Magic3D, ProlificDreamer and the
lecture call it the **Janus problem**, after the two-faced Roman god). To measure it we render the object from
``n`` azimuths and ask the pocket CLIP, which was trained with view-suffixed captions, which of

    "{prompt}, front view"    "{prompt}, side view"    "{prompt}, back view"

each render shows. Two numbers summarise the verdicts:

- ``janus_score``: the fraction of *back* views (|φ| > 135°, the sector ``cameras.view_label`` calls "back")
  judged "front". 0 for a well-formed object, 1 when it shows a front from behind.
- ``view_accuracy``: the fraction of all views whose verdict matches the camera's true label (front |φ| < 45°,
  side, back |φ| > 135°).

The verdicts cannot tell a two-faced object from a featureless one: a plain red cylinder is "front" from
everywhere too. ``two_faced_margin`` asks the ground truth instead: for each back view of the generated object,
is it closer (in the CLIP's image space) to the true object's *front* seen from the opposite camera, or to its
true *back* seen from the same camera? Near +1: it shows a front from behind (two-faced); near 0: it is as far
from both (featureless or symmetric); near −1: it shows its back, as the real object does.

Validate a judge before trusting it: ``measure_object`` runs the same measure on Pocket World ground truth, which
must say "front" at the front and "back" at the back (tested in ``tests/test_janus.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from text3d_edu.cameras import Cameras, orbit_cameras, view_label
from text3d_edu.priors import TextImagePrior

VIEWS = ("front", "side", "back")


def view_captions(prompt: str) -> list[str]:
    """'a red mug' → ['a red mug, front view', 'a red mug, side view', 'a red mug, back view']."""
    return [f"{prompt}, {view} view" for view in VIEWS]


def janus_cameras(n_azimuths: int = 24, elevations: tuple[float, ...] = (0.0, 15.0, 30.0), radius: float = 3.2,
                  resolution: int = 32) -> Cameras:
    """``n_azimuths`` evenly spaced azimuths φ ∈ [−180°, 180°) (0° = the front) at each elevation:
    B = n_azimuths · len(elevations) cameras, elevation-major."""
    azimuth = torch.arange(n_azimuths) * 360.0 / n_azimuths
    azimuth = (azimuth + 180.0) % 360.0 - 180.0  # wrap to [−180°, 180°)
    azimuth = torch.cat([azimuth for _ in elevations])
    elevation = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(n_azimuths)
    return orbit_cameras(azimuth, elevation, radius, resolution=resolution)


@torch.no_grad()
def judge_views(images: Tensor, prompt: str, clip: TextImagePrior) -> list[str]:
    """The CLIP's verdict per render: images (B, 3, H, W) in [0, 1] → B labels from ``VIEWS``."""
    best = clip.similarity(images, view_captions(prompt)).argmax(dim=-1)  # (B,)
    return [VIEWS[i] for i in best.tolist()]


@dataclass
class JanusReport:
    """Verdicts for B views and the two summary numbers (see the module docstring)."""

    azimuth: list[float]  # (B,) degrees, φ = 0 the object's front
    truth: list[str]  # (B,) the camera's true label: front / side / back
    judged: list[str]  # (B,) the CLIP's verdict

    @property
    def back_views_judged_front(self) -> tuple[int, int]:
        """(how many back views were judged front, how many back views there are)."""
        backs = [j for j, t in zip(self.judged, self.truth) if t == "back"]
        return backs.count("front"), len(backs)

    @property
    def janus_score(self) -> float:
        """The fraction of back views (|φ| > 135°) judged "front"."""
        judged_front, n_back = self.back_views_judged_front
        return judged_front / n_back

    @property
    def view_accuracy(self) -> float:
        """The fraction of views judged with their true label."""
        return sum(j == t for j, t in zip(self.judged, self.truth)) / len(self.judged)

    def strip(self, n_azimuths: int | None = None) -> str:
        """The verdicts as one letter per view (f / s / b), one line per elevation: a quick picture."""
        n = n_azimuths or len(self.judged)
        letters = "".join(j[0] for j in self.judged)
        return "\n".join(letters[i:i + n] for i in range(0, len(letters), n))


def janus_report(judged: list[str], azimuth: Tensor | list[float]) -> JanusReport:
    """Score verdicts ``judged`` (B,) of views at azimuths (B,) in degrees."""
    azimuth = [float(a) for a in torch.as_tensor(azimuth).reshape(-1)]
    if len(azimuth) != len(judged):
        raise ValueError(f"{len(judged)} verdicts for {len(azimuth)} azimuths")
    truth = [view_label(a) for a in azimuth]  # elevation 0: only the azimuth decides front / side / back
    if "back" not in truth:
        raise ValueError("no back views (|azimuth| > 135°) to score: use more azimuths (janus_cameras)")
    return JanusReport(azimuth, truth, list(judged))


def measure_images(images: Tensor, azimuth: Tensor | list[float], prompt: str, clip: TextImagePrior) -> JanusReport:
    """The Janus measure of renders (B, 3, H, W) taken at azimuths (B,) of an object described by ``prompt``."""
    return janus_report(judge_views(images, prompt, clip), azimuth)


def measure_field(field, prompt: str, clip: TextImagePrior, cameras: Cameras | None = None,
                  n_samples: int = 48) -> JanusReport:
    """Render a generated field on the Pocket World background from ``cameras`` (``janus_cameras()`` by
    default) and measure it."""
    from text3d_edu.generate import render_views

    cameras = cameras or janus_cameras()
    return measure_images(render_views(field, cameras, n_samples), cameras.azimuth, prompt, clip)


def measure_object(obj, clip: TextImagePrior, cameras: Cameras | None = None) -> JanusReport:
    """The same measure on a Pocket World object's ground-truth renders (the judge's sanity check)."""
    from text3d_edu.world_render import render

    cameras = cameras or janus_cameras()
    images = render(obj, cameras)["rgb"].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return measure_images(images, cameras.azimuth, obj.short_caption, clip)


@torch.no_grad()
def two_faced_margin(images: Tensor, cameras: Cameras, obj, clip: TextImagePrior) -> float:
    """Mean over the back views (|φ| > 135°) of (d_back − d_front) / (d_back + d_front) ∈ [−1, 1], with
    d = 1 − cos(φ(view), φ(truth)) the CLIP image distance to the true back (same camera) and to the true front
    (the camera turned by 180°: what a two-faced object shows from behind).

    images (B, 3, H, W): renders of the generated object from ``cameras``; ``obj``: the prompt's Pocket World
    object. +1: exactly the front from behind (two-faced); ≈ 0: as far from both (featureless); −1: the real back.
    """
    from text3d_edu.world_render import render

    back = (((cameras.azimuth + 180.0) % 360.0 - 180.0).abs() > 135.0).nonzero().flatten().tolist()
    if not back:
        raise ValueError("no back views (|azimuth| > 135°) to score: use more azimuths (janus_cameras)")
    seen = cameras[back]
    opposite = orbit_cameras(seen.azimuth + 180.0, seen.elevation, seen.radius, seen.fov_degrees, seen.resolution)
    view = clip.encode_image(images[back])  # (K, D), unit vectors
    true_back = clip.encode_image(render(obj, seen)["rgb"].permute(0, 3, 1, 2))
    true_front = clip.encode_image(render(obj, opposite)["rgb"].permute(0, 3, 1, 2))
    d_front, d_back = 1 - (view * true_front).sum(-1), 1 - (view * true_back).sum(-1)  # (K,), (K,)
    return ((d_back - d_front) / (d_back + d_front).clamp_min(1e-6)).mean().item()
