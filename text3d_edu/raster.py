"""A differentiable triangle rasteriser in plain torch (Magic3D's second stage renders meshes with one).

Volume rendering (``rendering.py``) evaluates a field at dozens of samples per ray; a rasteriser finds, for each
pixel, the one triangle it sees, so a pixel costs a few multiply-adds and higher resolutions fit. The steps:

1. **Project** the vertices (V, 3) world → camera (w2c = c2w⁻¹) → pixels with the pinhole of ``Cameras``:
   u = W/2 + f·x_c / z,  v = H/2 − f·y_c / z,  z = −z_c > 0 (the camera looks down its −z). This is the inverse
   of ``generate_rays``: the ray through pixel centre (u, v) = (x + ½, y + ½) hits exactly the projected point, so
   a mesh rasterised here and a field volume-rendered from the same cameras line up pixel for pixel.
2. **Edge functions** (Pineda 1988): E_ab(p) = (p_x − a_x)(b_y − a_y) − (p_y − a_y)(b_x − a_x), linear in p, zero
   on the line ab. For a triangle (v₀, v₁, v₂) the screen barycentrics are b₀ = E₁₂(p) / E₁₂(v₀) and cyclically;
   p is inside iff all b_i ≥ 0 (whatever the winding). A pixel centre exactly on an edge is counted by one
   triangle only (the *top-left rule* of Direct3D/OpenGL): an edge counts when the triangle lies to its right, or
   below it if the edge is horizontal. Each edge function is evaluated with its endpoints in a fixed order (lower
   vertex index first), so two triangles sharing an edge compute exactly ±the same value: no cracks, no overlap.
3. **Depth test**: the nearest covering triangle wins (a z-buffer, computed by a scatter-min over pixels).
4. **Perspective-correct interpolation**: screen barycentrics are not the 3D ones; 1/z is affine in screen space,
   so β_i = (b_i / z_i) / Σ_j (b_j / z_j) and z = 1 / Σ_j (b_j / z_j) (Heckbert & Moreton 1991). Attributes
   (colours, normals) are Σ β_i a_i.
5. **Soft silhouette** (SoftRas, Liu et al. 2019, eq. 1–3): the hard coverage above is piecewise constant in the
   vertex positions, so it has no gradient at object boundaries. SoftRas gives every triangle j a probability
   D_j(p) = sigmoid(δ_j · d²(p, f_j) / σ) of covering pixel p, with d the distance from p to the triangle's
   boundary (in pixels), δ_j = +1 inside and −1 outside, and aggregates A(p) = 1 − Π_j (1 − D_j(p)).
   As σ → 0 this tends to the hard silhouette; σ = 0.1 px² is SoftRas's σ = 10⁻⁴ (NDC²) at 64×64.

Work is chunked over (pixel, face) pairs: each face only visits the pixels of its screen bounding box (grown by the
soft silhouette's reach), enumerated in one vectorised step; faces are processed in chunks so at most
``max_pairs`` pairs are alive at once. Faces with a vertex behind the near plane are dropped (no clipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from text3d_edu.cameras import Cameras
from text3d_edu.toyworld import BACKGROUND

NEAR = 1e-2  # faces with a vertex closer than this to the camera plane are not drawn


@dataclass
class Fragments:
    """What each pixel sees, for B cameras at H × W.

    face_index (B, H, W) long: the nearest covering face, −1 where none; barycentrics (B, H, W, 3): its
    perspective-correct β (zeros where none; differentiable in the vertices); depth (B, H, W): distance along the
    pixel's ray as in ``world_render`` / ``rendering`` (0 where none); silhouette (B, H, W): SoftRas's soft coverage
    A ∈ [0, 1] (differentiable in the vertices, also just outside the object).
    """

    face_index: Tensor
    barycentrics: Tensor
    depth: Tensor
    silhouette: Tensor


def project(vertices: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """World points (V, 3) → pixel coordinates (B, V, 2) as (u, v) = (column, row) + sub-pixel, and depth z (B, V)
    in front of each camera (z = −z_c)."""
    c2w = cameras.c2w.to(vertices.dtype)
    rotation, eye = c2w[:, :3, :3], c2w[:, :3, 3]  # (B, 3, 3), (B, 3)
    camera_points = torch.einsum("bji,bvj->bvi", rotation, vertices[None] - eye[:, None])  # Rᵀ (x − eye)
    z = -camera_points[..., 2]
    half = cameras.resolution / 2
    u = half + cameras.focal * camera_points[..., 0] / z
    v = half - cameras.focal * camera_points[..., 1] / z
    return torch.stack([u, v], dim=-1), z


def edge_function(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """Pineda's E_ab(p) = (p_x − a_x)(b_y − a_y) − (p_y − a_y)(b_x − a_x) for points (..., 2) → (...)."""
    return (p[..., 0] - a[..., 0]) * (b[..., 1] - a[..., 1]) - (p[..., 1] - a[..., 1]) * (b[..., 0] - a[..., 0])


def edge_values(corners: Tensor, corner_ids: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """The three edge functions of each triangle at its pixel, E_i for the edge opposite corner i, each evaluated
    with its endpoints in vertex-index order so shared edges give exactly opposite values.

    corners (P, 3, 2) screen positions, corner_ids (P, 3) vertex indices, p (P, 2) → E (P, 3) and the gradient
    ∂E_i/∂p_x, ∂E_i/∂p_y as (P, 3, 2) (for the top-left rule).
    """
    values, gradients = [], []
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        swap = corner_ids[:, j] > corner_ids[:, k]
        sign = torch.where(swap, -1.0, 1.0).to(corners.dtype)
        a = torch.where(swap[:, None], corners[:, k], corners[:, j])
        b = torch.where(swap[:, None], corners[:, j], corners[:, k])
        values.append(sign * edge_function(a, b, p))
        gradients.append(sign[:, None] * torch.stack([b[:, 1] - a[:, 1], a[:, 0] - b[:, 0]], dim=-1))
    return torch.stack(values, dim=-1), torch.stack(gradients, dim=-2)


def inside_test(edges: Tensor, edge_gradients: Tensor) -> Tensor:
    """Inside test with the top-left tie rule. edges (P, 3) with the triangle's signed doubled area
    Σ_i E_i; a pixel on edge i (E_i = 0) counts when b_i grows to the right (or downwards for a horizontal edge)."""
    orientation = edges.sum(-1, keepdim=True).sign()  # +1 or −1: makes b_i = E_i / area ≥ 0 inside
    b_numerator = edges * orientation
    grad = edge_gradients * orientation[..., None]  # ∇_p of b_i, up to a positive factor
    top_left = (grad[..., 0] > 0) | ((grad[..., 0] == 0) & (grad[..., 1] > 0))
    return ((b_numerator > 0) | ((b_numerator == 0) & top_left)).all(-1) & (orientation[:, 0] != 0)


def _squared_distance_to_boundary(corners: Tensor, p: Tensor) -> Tensor:
    """d²(p, ∂triangle) = min over the three edges of the squared distance to the segment: (P, 3, 2), (P, 2) → (P,)."""
    a, b = corners, corners.roll(-1, dims=1)  # the edges v₀v₁, v₁v₂, v₂v₀
    ab, ap = b - a, p[:, None] - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (ap - t[..., None] * ab).pow(2).sum(-1).min(dim=-1).values


def _bounding_box_pairs(corners: Tensor, margin: float, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every (face, pixel) pair whose pixel centre lies in the face's screen bounding box grown by ``margin``.

    corners (N, 3, 2) → face ids (P,), pixel columns x (P,), rows y (P,)."""
    low = (corners.amin(1) - margin - 0.5).ceil().clamp(0, resolution).long()  # first pixel centre x + ½ ≥ min
    high = (corners.amax(1) + margin - 0.5).floor().clamp(-1, resolution - 1).long() + 1  # one past the last
    size = (high - low).clamp_min(0)  # (N, 2) pixels across, down
    count = size[:, 0] * size[:, 1]
    face = torch.repeat_interleave(torch.arange(len(corners)), count)
    local = torch.arange(len(face)) - torch.repeat_interleave(count.cumsum(0) - count, count)
    x = low[face, 0] + local % size[face, 0]
    y = low[face, 1] + local // size[face, 0]
    return face, x, y


def _check_mesh(vertices: Tensor, faces: Tensor) -> None:
    if vertices.ndim != 2 or vertices.shape[-1] != 3 or not vertices.is_floating_point():
        raise ValueError(f"expected vertices as a float tensor of shape (V, 3), got {tuple(vertices.shape)} "
                         f"{vertices.dtype}; pass one mesh at a time, e.g. torch.as_tensor(mesh.vertices).float()")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.is_floating_point():
        raise ValueError(f"expected faces as an integer tensor of shape (F, 3) (vertex indices), got "
                         f"{tuple(faces.shape)} {faces.dtype}; e.g. torch.as_tensor(mesh.faces).long()")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces index vertices 0..{len(vertices) - 1} but hold {int(faces.min())}.."
                         f"{int(faces.max())}; check that faces and vertices come from the same mesh")


def rasterize(vertices: Tensor, faces: Tensor, cameras: Cameras, sigma: float = 0.1,
              max_pairs: int = 1 << 20) -> Fragments:
    """Rasterise a triangle mesh (vertices (V, 3), faces (F, 3) long) from B cameras → ``Fragments``.

    ``sigma``: SoftRas's σ in pixels², the width of the soft silhouette. ``max_pairs``: how many (pixel, face)
    pairs one chunk evaluates (memory ∝ it).
    """
    _check_mesh(vertices, faces)
    faces = faces.long()
    B, n = len(cameras), cameras.resolution
    screen, z = project(vertices, cameras)  # (B, V, 2), (B, V)
    corners = screen[:, faces].reshape(-1, 3, 2)  # (B·F, 3, 2): face f of camera b is entry b·F + f
    corner_z = z[:, faces].reshape(-1, 3)
    corner_ids = faces.repeat(B, 1)
    visible = (corner_z.detach() > NEAR).all(-1).nonzero().squeeze(-1)  # faces entirely in front of the cameras
    # the soft silhouette's reach: D_j < 10⁻⁴ once d² > σ·ln(10⁴)
    margin = math.sqrt(sigma * math.log(1e4))

    face, x, y = _bounding_box_pairs(corners[visible].detach(), margin, n)
    face = visible[face]
    pixel = (face // len(faces)) * n * n + y * n + x  # flat index into (B, H, W)
    log_uncovered = torch.zeros(B * n * n, dtype=vertices.dtype)  # Σ_j log(1 − D_j)
    no_hit = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=vertices.dtype))
    hits = [no_hit]  # (pixel, face, depth) of every covering pair, chunk by chunk
    for chunk in torch.arange(len(face)).split(max_pairs):
        f, pix = face[chunk], pixel[chunk]
        p = torch.stack([x[chunk], y[chunk]], dim=-1).to(vertices.dtype) + 0.5  # pixel centres
        with torch.no_grad():
            edges, edge_gradients = edge_values(corners[f], corner_ids[f], p)
            inside = inside_test(edges, edge_gradients)
            b = edges / edges.sum(-1, keepdim=True)
            depth = 1 / (b / corner_z[f]).sum(-1)  # 1/z is affine in screen space
            hits.append((pix[inside], f[inside], depth[inside]))
        # SoftRas: log(1 − sigmoid(s)) = −softplus(s), s = δ d² / σ
        signed = torch.where(inside, 1.0, -1.0).to(vertices.dtype) * _squared_distance_to_boundary(corners[f], p)
        log_uncovered = log_uncovered.index_add(0, pix, -F.softplus(signed / sigma))
    silhouette = 1 - log_uncovered.exp()

    # depth test: the nearest covering face per pixel (ties between coplanar faces go to the higher face index)
    hit_pixel, hit_face, hit_depth = (torch.cat(column) for column in zip(*hits))
    nearest = torch.full((B * n * n,), math.inf, dtype=vertices.dtype).scatter_reduce(0, hit_pixel, hit_depth, "amin")
    front = hit_depth == nearest[hit_pixel]
    face_index = torch.full((B * n * n,), -1, dtype=torch.long).scatter_reduce(
        0, hit_pixel[front], hit_face[front], "amax")

    # differentiable barycentrics for the winners only (one per covered pixel)
    covered = (face_index >= 0).nonzero().squeeze(-1)
    winner = face_index[covered]
    row, column = (covered % (n * n)) // n, covered % n
    p = torch.stack([column, row], dim=-1).to(vertices.dtype) + 0.5
    edges, _ = edge_values(corners[winner], corner_ids[winner], p)
    b_over_z = edges / edges.sum(-1, keepdim=True) / corner_z[winner]
    barycentrics = torch.zeros(B * n * n, 3, dtype=vertices.dtype).index_put((covered,), b_over_z / b_over_z.sum(
        -1, keepdim=True))
    ray_length = torch.stack([(p[:, 0] - n / 2) / cameras.focal, -(p[:, 1] - n / 2) / cameras.focal,
                              -torch.ones_like(p[:, 0])], dim=-1).norm(dim=-1)  # |direction| of generate_rays at z=1
    depth = torch.zeros(B * n * n, dtype=vertices.dtype).index_put((covered,), ray_length / b_over_z.sum(-1))
    face_index = torch.where(face_index >= 0, face_index % max(len(faces), 1), face_index)  # b·F + f → f
    return Fragments(face_index.reshape(B, n, n), barycentrics.reshape(B, n, n, 3), depth.reshape(B, n, n),
                     silhouette.reshape(B, n, n))


def interpolate(attributes: Tensor, faces: Tensor, fragments: Fragments) -> Tensor:
    """Per-vertex attributes (V, C) (colours, normals, ...) → per-pixel Σ_i β_i a_i (B, H, W, C); 0 where no face."""
    if attributes.ndim != 2:
        raise ValueError(f"expected per-vertex attributes of shape (V, C), got {tuple(attributes.shape)}")
    if len(faces) == 0:  # an empty mesh (e.g. DMTet before its SDF crosses zero) covers nothing
        return attributes.new_zeros(*fragments.face_index.shape, attributes.shape[-1])
    corner_values = attributes[faces.long()][fragments.face_index.clamp_min(0)]  # (B, H, W, 3, C)
    values = (fragments.barycentrics[..., None] * corner_values).sum(-2)
    return values * (fragments.face_index >= 0)[..., None]


def render_mesh(vertices: Tensor, faces: Tensor, vertex_colours: Tensor, cameras: Cameras,
                background: Tensor | tuple = BACKGROUND, sigma: float = 0.1) -> dict[str, Tensor]:
    """Render a vertex-coloured mesh: {"rgb": (B, H, W, 3), "opacity": (B, H, W), "depth": (B, H, W)}, the same
    keys and layout as ``rendering.render_image``.

    rgb = A·c + (1 − A)·background on covered pixels (c: the interpolated vertex colour, A: the soft silhouette),
    background elsewhere; opacity = A. Gradients reach the colours, the vertex positions through β and, at the
    boundary, through A.
    """
    _check_mesh(vertices, faces)
    if vertex_colours.shape != vertices.shape:
        raise ValueError(f"expected vertex_colours of shape (V, 3) = {tuple(vertices.shape)}, one RGB in [0, 1] per "
                         f"vertex, got {tuple(vertex_colours.shape)}; for a trimesh use "
                         "mesh.visual.vertex_colors[:, :3] / 255")
    fragments = rasterize(vertices, faces, cameras, sigma)
    background = torch.as_tensor(background, dtype=vertices.dtype)
    colour = interpolate(vertex_colours.to(vertices.dtype), faces, fragments)
    covered = (fragments.face_index >= 0)[..., None]
    opacity = fragments.silhouette
    rgb = torch.where(covered, opacity[..., None] * colour + (1 - opacity[..., None]) * background, background)
    return {"rgb": rgb, "opacity": opacity, "depth": fragments.depth}
