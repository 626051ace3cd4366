"""From volumes to meshes: marching cubes (Lorensen & Cline 1987) and export to GLB / OBJ / PLY via trimesh.

Used for the Pocket World's ground-truth meshes (an SDF: inside where f < 0) and for every generated object
(a NeRF density: inside where σ > τ). ``skimage.measure.marching_cubes`` interpolates sub-voxel vertex positions;
we map its index coordinates back to world coordinates in [−bound, bound]³.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage import measure
from torch import Tensor


def marching_cubes_mesh(volume: np.ndarray, level: float, inside_is_below: bool, bound: float = 1.0,
                        colour_fn: Callable[[Tensor], Tensor] | None = None) -> trimesh.Trimesh:
    """Extract the iso-surface ``volume == level`` of a (R, R, R) grid indexed [x, y, z] over [−bound, bound]³.

    ``inside_is_below``: True for SDFs (inside f < level), False for densities (inside σ > level).
    ``colour_fn`` maps world points (V, 3) to RGB (V, 3) in [0, 1] for vertex colours.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"expected a cubic volume of shape (R, R, R), got {volume.shape}")
    if not volume.min() < level < volume.max():
        raise ValueError(f"the volume never crosses level {level} (range {volume.min():.3g}..{volume.max():.3g}): "
                         "nothing to mesh; lower the threshold or train longer")
    # skimage's gradient_direction sets the faces' winding; this choice winds them counter-clockwise seen from
    # outside (normals out) for both: measured, a sphere SDF's mesh has volume +0.899 ≈ 4/3·π·0.6³ (−0.899 the
    # other way round, which viewers that cull back faces show inside out)
    direction = "descent" if inside_is_below else "ascent"
    vertices, faces, _, _ = measure.marching_cubes(volume, level, gradient_direction=direction)
    vertices = vertices / (volume.shape[0] - 1) * 2 * bound - bound
    colours = None
    if colour_fn is not None:
        rgb = colour_fn(torch.as_tensor(vertices, dtype=torch.float32)).detach().clamp(0, 1).numpy()
        colours = np.concatenate([(rgb * 255).round(), np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colours, process=False)


@torch.no_grad()
def field_to_mesh(field, resolution: int = 64, threshold: float = 10.0, bound: float = 1.0) -> trimesh.Trimesh:
    """Mesh a radiance field: marching cubes of its density σ at ``threshold``, coloured by the field's colour
    seen from straight on (along −normal would be fancier; our fields' colour is view-independent or nearly)."""
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    sigma = torch.cat([field(chunk, torch.zeros_like(chunk))[0] for chunk in points.split(65536)])
    volume = sigma.reshape(resolution, resolution, resolution).numpy()

    def colour(vertices: Tensor) -> Tensor:
        view_dirs = torch.nn.functional.normalize(-vertices, dim=-1)  # as if seen from outside, looking inwards
        return field(vertices, view_dirs)[1]

    return marching_cubes_mesh(volume, threshold, inside_is_below=False, bound=bound, colour_fn=colour)


def export(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write a mesh as .glb, .obj or .ply (chosen by the suffix) and return the path."""
    path = Path(path)
    if path.suffix.lower() not in {".glb", ".obj", ".ply"}:
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .obj or .ply")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path
