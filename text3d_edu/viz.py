"""Looking at results: image grids and turntable GIFs (matplotlib / PIL), interactive 3D (plotly), and a camera
slider over a fitted field (ipywidgets). Every 3D result in the course is viewable with one of these.

Plotly figures are returned, not shown: a notebook cell that ends with ``fig`` displays it interactively, and
``fig.write_html(path)`` saves a standalone page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor


def _to_numpy_images(images) -> np.ndarray:
    """(N, H, W, 3) tensor/array in [0, 1] → uint8 array."""
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {array.shape}")
    return (array.clip(0, 1) * 255).round().astype(np.uint8)


def image_grid(images, ncols: int = 8, titles: list[str] | None = None, path: str | Path | None = None,
               scale: float = 1.2):
    """Show images (N, H, W, 3) in a grid with optional titles; save to ``path`` if given. Returns the figure."""
    import matplotlib.pyplot as plt

    array = _to_numpy_images(images)
    nrows = -(-len(array) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.3 if titles else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(array):
            ax.imshow(array[i], interpolation="nearest")
            if titles:
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout(pad=0.2)
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def turntable_gif(render_fn: Callable, path: str | Path, n_frames: int = 24, elevation: float = 20.0,
                  resolution: int = 64, fps: int = 12) -> Path:
    """Render ``n_frames`` views around the object with ``render_fn(cameras) -> (B, H, W, 3)`` and save a GIF."""
    from PIL import Image

    from text3d_edu.cameras import turntable_cameras

    frames = _to_numpy_images(render_fn(turntable_cameras(n_frames, elevation, resolution=resolution)))
    images = [Image.fromarray(f).resize((2 * resolution, 2 * resolution), Image.NEAREST) for f in frames]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def _layout(fig: go.Figure, title: str | None) -> go.Figure:
    axis = {"range": [-1, 1], "showbackground": False, "title": ""}
    fig.update_layout(title=title, height=420, margin={"l": 0, "r": 0, "t": 30 if title else 0, "b": 0},
                      scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube",
                             "camera": {"up": {"x": 0, "y": 1, "z": 0}, "eye": {"x": 0.9, "y": 0.7, "z": 1.6}}})
    return fig


def plot_mesh(mesh, title: str | None = None) -> go.Figure:
    """An interactive plotly view of a ``trimesh.Trimesh`` (vertex colours if it has them)."""
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    colours = None
    if mesh.visual.kind == "vertex":
        colours = [f"rgb({r},{g},{b})" for r, g, b in np.asarray(mesh.visual.vertex_colors)[:, :3]]
    trace = go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2], vertexcolor=colours,
                      color=None if colours else "lightgrey", flatshading=False,
                      lighting={"ambient": 0.7, "diffuse": 0.4})
    return _layout(go.Figure(trace), title)


def plot_point_cloud(points, colours=None, title: str | None = None, size: float = 2.0) -> go.Figure:
    """An interactive view of a point cloud: points (N, 3), optional colours (N, 3) in [0, 1]."""
    p = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    if p.ndim != 2 or p.shape[-1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {p.shape}")
    marker = {"size": size}
    if colours is not None:
        c = colours.detach().cpu().numpy() if isinstance(colours, Tensor) else np.asarray(colours)
        marker["color"] = [f"rgb({r},{g},{b})" for r, g, b in (c.clip(0, 1) * 255).round().astype(int)]
    return _layout(go.Figure(go.Scatter3d(x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", marker=marker)), title)


def plot_field(field, resolution: int = 48, threshold: float = 10.0, title: str | None = None) -> go.Figure:
    """An interactive view of a radiance field: the coloured mesh of its density iso-surface σ = threshold."""
    from text3d_edu.mesh import field_to_mesh

    return plot_mesh(field_to_mesh(field, resolution, threshold), title)


def plot_cameras(cameras, title: str | None = None, mesh=None) -> go.Figure:
    """Camera centres and viewing directions (as cones) around the origin, optionally with a mesh."""
    fig = plot_mesh(mesh) if mesh is not None else _layout(go.Figure(), None)
    eye = cameras.c2w[:, :3, 3].numpy()
    forward = -cameras.c2w[:, :3, 2].numpy()
    fig.add_trace(go.Cone(x=eye[:, 0], y=eye[:, 1], z=eye[:, 2], u=forward[:, 0], v=forward[:, 1],
                          w=forward[:, 2], sizemode="absolute", sizeref=0.4, anchor="tail", showscale=False,
                          colorscale=[[0, "black"], [1, "black"]]))
    axis = {"range": [-4, 4], "showbackground": False, "title": ""}
    fig.update_layout(title=title, scene={"xaxis": axis, "yaxis": axis, "zaxis": axis})
    return fig


def camera_slider(render_fn: Callable, resolution: int = 64):
    """An ipywidgets viewer: azimuth / elevation sliders re-render ``render_fn(cameras) -> (1, H, W, 3)``."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from text3d_edu.cameras import orbit_cameras

    def show(azimuth: float = 0.0, elevation: float = 20.0):
        with torch.no_grad():
            image = _to_numpy_images(render_fn(orbit_cameras([azimuth], elevation, resolution=resolution)))[0]
        plt.figure(figsize=(3, 3))
        plt.imshow(image)
        plt.axis("off")
        plt.show()

    return widgets.interact(show, azimuth=widgets.FloatSlider(0, min=-180, max=180, step=15),
                            elevation=widgets.FloatSlider(20, min=-30, max=89, step=5))


def beside_truth(prompt: str, fields: dict, azimuths=(0.0, 90.0, 180.0, 270.0), elevation: float = 15.0,
                 resolution: int = 64, scale: float = 1.6, path: str | Path | None = None):
    """The prompt's true Pocket World object (top row) and each generated field (one row per entry of ``fields``,
    name → field) from the same cameras, each row titled with its ground-truth fidelity (silhouette IoU, colour
    error). Returns the figure."""
    import torch

    from text3d_edu import toyworld, world_render
    from text3d_edu.cameras import orbit_cameras
    from text3d_edu.generate import field_fidelity, render_views

    cameras = orbit_cameras(list(azimuths), elevation, 3.2, resolution=resolution)
    rows = [world_render.render(toyworld.parse_caption(prompt), cameras)["rgb"]]
    titles = [f"truth, φ = {a:g}°" for a in azimuths]
    for name, field_ in fields.items():
        rows.append(render_views(field_, cameras).permute(0, 2, 3, 1))
        f = field_fidelity(field_, prompt)
        titles += [f"{name}: IoU {f['silhouette_iou']:.2f}, colour err {f['colour_error']:.2f}"] + [name] * (
            len(azimuths) - 1)
    return image_grid(torch.cat(rows), ncols=len(azimuths), titles=titles, path=path, scale=scale)
