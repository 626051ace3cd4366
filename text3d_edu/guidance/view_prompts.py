"""View-dependent prompting (DreamFusion §3.2, "view-dependent conditioning").

A 2D prior asked for "a red mug" from every camera happily draws the mug's *front* from every camera: the
optimised object grows several fronts — the **Janus problem**. DreamFusion appends the camera's coarse direction
to the prompt: "a red mug, back view" asks the prior for what the mug looks like from behind. The labels come from
``cameras.view_label`` (front |φ| < 45°, back |φ| > 135°, side in between, overhead above 60° of elevation).
"""

from __future__ import annotations

from text3d_edu.cameras import Cameras, view_label


def view_prompt(prompt: str, azimuth: float, elevation: float) -> str:
    """'a red mug' seen from azimuth 180° → 'a red mug, back view'."""
    return f"{prompt}, {view_label(azimuth, elevation)} view"


def view_prompts(prompt: str, cameras: Cameras) -> list[str]:
    """One view-dependent prompt per camera of the batch."""
    return [view_prompt(prompt, a, e) for a, e in zip(cameras.azimuth.tolist(), cameras.elevation.tolist())]
