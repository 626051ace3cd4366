"""A generated result on disk → something that renders: what a student inspects and a second judge scores.

A folder written by ``text3d-edu generate`` says in its ``metrics.json`` which 3D representation it holds
(``"representation"``, "grid" when absent; a run still in progress has no metrics.json yet and is read as "grid"),
and keeps that representation in its own file (a grid: ``checkpoint.pt``). ``load_result`` picks the loader for
the representation and returns a ``Result``, whose ``render(cameras)`` gives images (B, 3, H, W) in [0, 1] on the
Pocket World background: for the judge's cameras, the images of ``views.png``. A new representation (a mesh, a
point cloud, an SDF shape) plugs in as one more entry of ``LOADERS``.

VSD's n particles ("grid-particles") render as one batch, particle-major: (n·B, 3, H, W); each ``particle_K/``
folder of such a result is itself a "grid" result. Magic3D's textured mesh ("mesh") keeps its DMTet in
``checkpoint.pt`` and renders through the rasteriser; its ``coarse/`` folder is the grid result of stage 1.

``render_result`` is the ``text3d-edu render`` command: load, render from orbit cameras, write a .npy or a .png.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from text3d_edu.cameras import Cameras, orbit_cameras
from text3d_edu.dmtet import DMTet
from text3d_edu.fields import GridField
from text3d_edu.generate import render_views

SUFFIXES = (".png", ".npy")


class Result(Protocol):
    """Anything ``generate`` can produce, seen from outside: it renders."""

    def render(self, cameras: Cameras) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] of the result on the Pocket World background."""
        ...


@dataclass
class GridResult:
    """A voxel-grid radiance field (``GridField``): what the methods clip, sds and sds-jacobian optimise."""

    field: GridField

    def render(self, cameras: Cameras) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], rendered exactly as ``generate`` renders views.png."""
        return render_views(self.field, cameras)


def _grid(field_state: dict) -> GridResult:
    field = GridField(field_state["log_sigma"].shape[-1])  # log_sigma is (1, 1, R, R, R)
    field.load_state_dict(field_state)
    return GridResult(field.eval())


def _load_checkpoint(result_dir: Path) -> Result:
    """A grid result (checkpoint "field") or VSD's particles (checkpoint "particles", finished or in progress)."""
    checkpoint = result_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"{result_dir} holds no checkpoint.pt, so it is not a grid result of text3d-edu generate: "
                         f"give the folder that generate's --out named")
    state = torch.load(checkpoint, weights_only=True)  # weights only: a result may come from someone else
    if state.get("particles"):
        return ParticlesResult([_grid(field_state) for field_state in state["particles"]])
    if "field" not in state:
        raise ValueError(f"{checkpoint} has no 'field' or 'particles' entry: it was not written by text3d-edu "
                         f"generate")
    return _grid(state["field"])


@dataclass
class ParticlesResult:
    """VSD's particles θ⁽¹⁾…θ⁽ⁿ⁾, each a ``GridResult``."""

    particles: list[GridResult]

    def render(self, cameras: Cameras) -> Tensor:
        """Images (n·B, 3, H, W) in [0, 1]: every particle from every camera, particle-major."""
        return torch.cat([particle.render(cameras) for particle in self.particles])


@dataclass
class MeshResult:
    """Magic3D's textured mesh: a ``DMTet`` (SDF, deformation and colour grid), rasterised."""

    dmtet: DMTet

    def render(self, cameras: Cameras) -> Tensor:
        """Images (B, 3, H, W) in [0, 1], rendered exactly as ``generate_magic3d`` renders views.png."""
        from text3d_edu.magic3d import mesh_views

        return mesh_views(self.dmtet, cameras)


def _load_mesh(result_dir: Path) -> MeshResult:
    checkpoint = result_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"{result_dir} holds no checkpoint.pt: its mesh was not written; re-run text3d-edu "
                         f"generate --method magic3d with --resume")
    state = torch.load(checkpoint, weights_only=True)
    if "dmtet" not in state:
        raise ValueError(f"{checkpoint} has no 'dmtet' entry: it was not written by text3d-edu generate --method "
                         f"magic3d")
    dmtet = DMTet(state["dmtet_resolution"], state["colour_resolution"])
    dmtet.load_state_dict(state["dmtet"])
    return MeshResult(dmtet.eval())


LOADERS: dict[str, Callable[[Path], Result]] = {"grid": _load_checkpoint, "grid-particles": _load_checkpoint,
                                                "mesh": _load_mesh}


def load_result(result_dir: str | Path) -> Result:
    """The result that ``text3d-edu generate`` wrote into ``result_dir``, ready to ``render(cameras)``."""
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise ValueError(f"{result_dir} is not a directory: give the folder that text3d-edu generate wrote "
                         f"(its --out)")
    metrics_path = result_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_path} is not valid JSON ({err}): re-run text3d-edu generate") from err
    representation = metrics.get("representation", "grid")
    if representation not in LOADERS:
        raise ValueError(f"{metrics_path} names representation {representation!r}, which cannot be rendered yet: "
                         f"known representations are {', '.join(LOADERS)}")
    return LOADERS[representation](result_dir)


def render_result(result_dir: str | Path, out: str | Path, azimuths: list[float], elevation: float = 15.0,
                  radius: float = 3.2, resolution: int = 32, force: bool = False) -> Tensor:
    """Render the result in ``result_dir`` from orbit cameras at ``azimuths`` (degrees) and write ``out``.

    ``out`` ending in .npy gets the float32 images (B, 3, N, N) in [0, 1]; .png gets a grid titled by azimuth.
    The defaults are the judge's cameras (``generate.judge_cameras``) but for the azimuths. An existing ``out``
    is never overwritten unless ``force``. Returns the images (B, 3, N, N); for VSD's n particles, (n·B, 3, N, N),
    particle-major, one row of the .png per particle.
    """
    out = Path(out)
    if len(azimuths) == 0:
        raise ValueError("no azimuths: give at least one, e.g. --azimuths 0 90 180 270")
    if resolution < 8:
        raise ValueError(f"resolution {resolution} is too small to see anything: use 8 or more (the judge uses 32)")
    if not -90.0 < elevation < 90.0:
        raise ValueError(f"elevation {elevation} must lie strictly between -90 and 90 degrees")
    if radius <= 0:
        raise ValueError(f"radius {radius} must be positive (the judge uses 3.2; the object fills [-1, 1]³)")
    if out.suffix not in SUFFIXES:
        raise ValueError(f"cannot write {out}: end it in .png (a labelled image grid) or .npy (the float32 images)")
    if out.exists() and not force:
        raise ValueError(f"{out} already exists: choose another --out, or pass --force to overwrite it")
    result = load_result(result_dir)
    images = result.render(orbit_cameras(azimuths, elevation, radius, resolution=resolution)).clamp(0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, images.numpy().astype(np.float32))
    else:
        from text3d_edu import viz

        # at least one screen pixel per rendered pixel: 100 dpi, so scale (inches per image) ≥ resolution / 100
        rows = len(images) // len(azimuths)  # one per particle
        titles = [f"az {a:g}°" if rows == 1 else f"particle {k}, az {a:g}°" for k in range(rows) for a in azimuths]
        viz.image_grid(images.permute(0, 2, 3, 1), ncols=min(8, len(azimuths)) if rows == 1 else len(azimuths),
                       titles=titles, path=out, scale=max(1.3, resolution / 100))
    return images
