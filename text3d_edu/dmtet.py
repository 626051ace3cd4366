"""DMTet: a surface you can optimise as a mesh (Shen et al., "Deep Marching Tetrahedra", NeurIPS 2021), as Magic3D
uses it for its fine stage (Lin et al., "Magic3D", CVPR 2023: the mesh optimisation of its second stage).

The shape is stored on a fixed tetrahedral grid (V_T, T): every grid vertex v_i carries a signed distance s_i
(inside where s < 0) and a small deformation Δv_i. Differentiable marching tetrahedra (the paper's surface
extraction) turns the deformed grid into a triangle mesh:

1. ``tetrahedral_grid``: the cube [−1, 1]³ cut into R³ cells and every cell into 6 tetrahedra (the Kuhn split).
2. ``marching_tetrahedra``: in every tetrahedron whose four s_i do not share one sign, put a vertex on each edge
   whose ends differ in sign, where the linear interpolation of s is zero (the paper's vertex formula):
       v'_ab = (s_a · v_b − s_b · v_a) / (s_a − s_b)
   and join them into 1 triangle (one vertex differs from the other three) or 2 (two against two): the 16-case
   table, built below from the geometry rather than typed in. v'_ab is a smooth function of s_a, s_b, v_a, v_b,
   so a loss on the mesh sends gradients to both s and Δv.
3. ``DMTet``: the module that holds s and Δv as parameters, with a small colour field queried at surface points.
   Magic3D initialises it from the coarse stage's density σ: s = ln τ − ln σ (inside where σ > τ).

A mesh (vertices (V, 3), faces (F, 3)) comes out with outward normals (counter-clockwise seen from outside) and
one vertex per grid edge, shared by the faces on both sides: where the surface is closed inside the cube it is a
closed, manifold (watertight) mesh. A surface that runs into the cube's walls stays open there.

Measured on one CPU thread: extracting a sphere of radius 0.6 takes 0.015 s at R = 32 (10k faces) and 0.03 s at
R = 64 (41k faces, 1.6M tetrahedra); the larger surface of a ``GridField`` blob 0.03 s (23k faces) and 0.12 s
(91k faces), the backward pass adding little. Building the grid costs 0.05 s at R = 32 and 0.5 s at R = 64, once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import trimesh
from torch import Tensor, nn

from text3d_edu.fields import trilinear

# the six edges of a tetrahedron (a, b), in the order the case table refers to them
TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


def lattice_points(n: int) -> Tensor:
    """The n³ points of a regular lattice over [−1, 1]³ (n³, 3), in the order of a grid indexed [x, y, z]."""
    axis = torch.linspace(-1, 1, n)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def tetrahedral_grid(resolution: int) -> tuple[Tensor, Tensor]:
    """The cube [−1, 1]³ split into R³ cells, each cell into 6 tetrahedra with positive signed volume.

    Returns vertex positions (V, 3) with V = (R+1)³ (a lattice, indexed [x, y, z] like ``GridField``) and
    tetrahedra (T, 4) with T = 6R³, long indices into the vertices.

    The Kuhn (Freudenthal) split: a cell's tetrahedra are the 3! monotone paths from its corner (0, 0, 0) to its
    corner (1, 1, 1), stepping along x, y and z in each of the six orders. Every cell is split the same way, so the
    diagonal a cell puts on a face is the one its neighbour puts on that face (the grid is conforming without the
    alternating mirrored cells that the 5-per-cell split needs), and all 6R³ tetrahedra are congruent.
    A path visited in an odd order of axes gives a tetrahedron of negative signed volume (inside-out); swapping two
    of its vertices turns it the right way round.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of cells per axis, got {resolution}")
    n = resolution + 1
    positions = lattice_points(n)  # (V, 3)

    corner_steps = []  # (6, 4, 3) the corners of each path, as 0/1 offsets
    for order in itertools.permutations(range(3)):
        corner, path = [0, 0, 0], [(0, 0, 0)]
        for axis_index in order:
            corner[axis_index] = 1
            path.append(tuple(corner))
        corner_steps.append(path)
    offsets = torch.tensor(corner_steps)  # (6, 4, 3)
    # signed volume of each reference tetrahedron (6 · vol = det[b − a, c − a, d − a]); make them all positive
    edges = (offsets[:, 1:] - offsets[:, :1]).double()
    flip = torch.linalg.det(edges) < 0
    offsets[flip] = offsets[flip][:, [1, 0, 2, 3]]

    cells = torch.stack(torch.meshgrid(*[torch.arange(resolution)] * 3, indexing="ij"), dim=-1).reshape(-1, 1, 1, 3)
    corners = cells + offsets  # (R³, 6, 4, 3) lattice coordinates
    tets = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]
    return positions, tets.reshape(-1, 4)


def signed_volumes(positions: Tensor, tets: Tensor) -> Tensor:
    """Signed volume of each tetrahedron (T,) = det[b − a, c − a, d − a] / 6; positive when (b, c, d) turn
    counter-clockwise seen from a. positions (V, 3), tets (T, 4)."""
    corners = positions[tets]  # (T, 4, 3)
    return torch.linalg.det(corners[:, 1:] - corners[:, :1]) / 6


def _build_case_table() -> tuple[Tensor, Tensor]:
    """The 16-case marching-tetrahedra table: for each inside/outside pattern of a tetrahedron's four vertices
    (case = Σ_i [s_i < 0]·2^i), up to two triangles given as indices into ``TET_EDGES``.

    Returns triangles (16, 2, 3) (−1 where there is no triangle) and the number of triangles per case (16,).
    Each triangle is wound so that its normal points from the inside vertices to the outside ones, checked on a
    reference tetrahedron of positive volume: every tetrahedron of the grid is an orientation-preserving affine
    image of it, so the winding holds for all of them.
    """
    reference = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    edge_index = {tuple(edge): i for i, edge in enumerate(TET_EDGES.tolist())}

    def edge(a: int, b: int) -> int:
        return edge_index[(min(a, b), max(a, b))]

    triangles = torch.full((16, 2, 3), -1, dtype=torch.long)
    counts = torch.zeros(16, dtype=torch.long)
    for case in range(16):
        inside = [i for i in range(4) if case >> i & 1]
        outside = [i for i in range(4) if not case >> i & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) == 1 or len(outside) == 1:  # one vertex alone: a triangle around it
            (alone,), rest = (inside, outside) if len(inside) == 1 else (outside, inside)
            candidates = [[edge(alone, other) for other in rest]]
        else:  # two against two: the crossing edges form a quad a-c, a-d, b-d, b-c; cut it into two triangles
            (a, b), (c, d) = inside, outside
            candidates = [[edge(a, c), edge(a, d), edge(b, d)], [edge(a, c), edge(b, d), edge(b, c)]]
        towards_outside = reference[outside].mean(0) - reference[inside].mean(0)
        for k, triangle in enumerate(candidates):
            midpoints = reference[TET_EDGES[triangle]].mean(1)  # (3, 3)
            normal = torch.linalg.cross(midpoints[1] - midpoints[0], midpoints[2] - midpoints[0])
            if normal @ towards_outside < 0:
                triangle = [triangle[0], triangle[2], triangle[1]]
            triangles[case, k] = torch.tensor(triangle)
        counts[case] = len(candidates)
    return triangles, counts


TRIANGLE_TABLE, TRIANGLE_COUNT = _build_case_table()


def interpolate_edge(p_a: Tensor, p_b: Tensor, s_a: Tensor, s_b: Tensor) -> Tensor:
    """The zero crossing of s on the edge a–b (DMTet's v'_ab): (s_a·p_b − s_b·p_a) / (s_a − s_b).

    p_a, p_b (E, 3), s_a, s_b (E,) with opposite signs → (E, 3). Where s is linear along the edge this is exactly
    the point where it vanishes; it is differentiable in all four arguments.
    """
    return (s_a[:, None] * p_b - s_b[:, None] * p_a) / (s_a - s_b)[:, None]


def marching_tetrahedra(positions: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable marching tetrahedra: the surface s = 0 of a tetrahedral grid.

    positions (V, 3) (possibly deformed), sdf (V,) (inside where s < 0), tets (T, 4) positively oriented →
    vertices (M, 3), differentiable in ``positions`` and ``sdf``, and faces (F, 3) long, wound counter-clockwise
    seen from outside. Each grid edge crossing the surface gives one vertex, shared by every face that uses it.
    """
    if positions.ndim != 2 or positions.shape[1] != 3 or sdf.shape != positions.shape[:1]:
        raise ValueError(f"expected positions (V, 3) and sdf (V,), got {tuple(positions.shape)} and "
                         f"{tuple(sdf.shape)}")
    if tets.ndim != 2 or tets.shape[1] != 4:
        raise ValueError(f"expected tets of shape (T, 4), got {tuple(tets.shape)}")
    device = sdf.device
    inside = sdf < 0  # (V,)
    # 1. the tetrahedra the surface passes through: some but not all of their vertices inside
    #    (a byte per vertex and index_select: this lookup over all 6R³ tetrahedra is most of the time at R = 64)
    inside_count = inside.byte().index_select(0, tets.flatten()).view(-1, 4).sum(1, dtype=torch.uint8)  # (T,)
    crossed_tets = tets[(inside_count > 0) & (inside_count < 4)]  # (T', 4)
    if crossed_tets.shape[0] == 0:
        raise ValueError(f"the SDF never changes sign on the grid (range {sdf.min():.3g}..{sdf.max():.3g}): there is "
                         "no surface; pass an SDF negative inside the object (from a density, a threshold τ inside its "
                         "range), or a finer grid if the object is thinner than a cell")
    # 2. their edges, each grid edge once: sorted vertex pairs (a < b), deduplicated by the key a·V + b
    #    (one integer per edge: torch.unique on integers is ~20× faster than on rows)
    n_vertices = positions.shape[0]
    edges = crossed_tets[:, TET_EDGES.to(device)].reshape(-1, 2).sort(dim=1).values  # (6T', 2)
    unique_keys, edge_of_slot = torch.unique(edges[:, 0] * n_vertices + edges[:, 1], return_inverse=True)
    unique_edges = torch.stack([unique_keys // n_vertices, unique_keys % n_vertices], dim=1)  # (E, 2)
    crossing = inside[unique_edges[:, 0]] != inside[unique_edges[:, 1]]  # (E,)
    # 3. one mesh vertex per crossing edge, at the zero of s: v'_ab
    a, b = unique_edges[crossing].T
    vertices = interpolate_edge(positions[a], positions[b], sdf[a], sdf[b])  # (M, 3)
    vertex_of_edge = torch.full((unique_edges.shape[0],), -1, dtype=torch.long, device=device)
    vertex_of_edge[crossing] = torch.arange(int(crossing.sum()), device=device)
    vertex_of_slot = vertex_of_edge[edge_of_slot].reshape(-1, 6)  # (T', 6): the vertex on each edge, or −1
    # 4. the case table: which edges' vertices make the 1 or 2 triangles of each tetrahedron
    powers = 2 ** torch.arange(4, device=device)
    case = (inside[crossed_tets].long() * powers).sum(1)  # (T',)
    triangles = TRIANGLE_TABLE.to(device)[case]  # (T', 2, 3) edge slots, −1 where absent
    present = torch.arange(2, device=device) < TRIANGLE_COUNT.to(device)[case][:, None]  # (T', 2)
    faces = torch.gather(vertex_of_slot, 1, triangles.clamp_min(0).reshape(-1, 6)).reshape(-1, 2, 3)[present]
    return vertices, faces


class VoxelColourField(nn.Module):
    """A coarse colour grid over [−1, 1]³: c(x) = sigmoid(trilinear(grid, x)), points (N, 3) → RGB (N, 3).

    As ``GridField``'s colour, with its own resolution: trilinear lookup costs almost nothing per surface point,
    so texture optimisation on a CPU is cheap (a positional-encoding MLP would be the smoother, slower choice).
    """

    def __init__(self, resolution: int = 32):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(1, 3, resolution, resolution, resolution))  # indexed [x, y, z]

    @property
    def resolution(self) -> int:
        return self.logits.shape[-1]

    def grid_points(self) -> Tensor:
        """The colour grid's own sample points (G³, 3), in the order of ``logits``."""
        return lattice_points(self.resolution)

    def forward(self, points: Tensor) -> Tensor:
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"expected points of shape (N, 3), got {tuple(points.shape)}")
        return torch.sigmoid(trilinear(self.logits, points))


@torch.no_grad()
def query_field(field: nn.Module, points: Tensor) -> tuple[Tensor, Tensor]:
    """A field's (σ (N,), rgb (N, 3)) at points (N, 3), in chunks, with no view direction (zeros)."""
    outputs = [field(chunk, torch.zeros_like(chunk)) for chunk in points.split(65536)]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


def density_to_sdf(density: Tensor, tau: float) -> Tensor:
    """s = ln τ − ln σ: negative inside (σ > τ), zero where the density crosses τ.

    Why the logarithm: a ``GridField`` interpolates ln σ trilinearly (σ = exp(trilinear(grid))), so ln σ is the
    quantity that varies linearly between grid points, and marching tetrahedra's linear interpolation of s along
    an edge puts the vertex where the field's own σ crosses τ. With s = τ − σ the vertex slides towards the outer
    end of every edge wherever σ is steep: after 600 SDS steps the red mug's σ rises from 0.01 to 10³–10⁴ within
    two cells, and its hand-over mesh (32³ grid) matched the field's silhouette with IoU 0.93 at best (τ = 260),
    against 0.98 (τ = 51) with the logarithm; its IoU with the true mug was 0.79 against 0.86 (the field's: 0.87).
    A density of 0 (outside the field's cube) is read as 10⁻⁶."""
    return math.log(tau) - torch.log(density.clamp_min(1e-6))


def density_threshold(density: Tensor, threshold: float | str = "auto") -> float:
    """τ for s = ln τ − ln σ (``density_to_sdf``). A number is used as given; "auto" is threestudio's choice for
    Magic3D's refine stage (``isosurface_threshold: auto`` in ``ImplicitVolume``): the mean density over the points
    where σ > 10⁻⁵, i.e. the mean of the non-empty space, which adapts to how dense the coarse stage made the object."""
    if threshold == "auto":
        occupied = density[density > 1e-5]
        if occupied.numel() == 0:
            raise ValueError("the density is empty everywhere (σ ≤ 1e-5): there is no object to mesh; "
                             "train the coarse field longer or pass a number as threshold")
        return float(occupied.mean())
    if isinstance(threshold, str):
        raise ValueError(f"unknown threshold {threshold!r}: use 'auto' or a number")
    return float(threshold)


class DMTet(nn.Module):
    """The DMTet representation: s (V,) and Δv (V, 3) on a tetrahedral grid of ``resolution``³ cells, and a
    colour field. ``forward()`` → vertices (M, 3), faces (F, 3) of the surface s = 0 (differentiable in s, Δv).

    The deformed grid is v_i + (h/2)·tanh(Δv_i) with h = 2/R the cell size: tanh bounds the move to half a cell
    per axis, so two neighbours moving towards each other can at most meet (threestudio bounds it the same way,
    (extent / resolution)·tanh(Δv), "about half a tet" for its grids). Near that bound a thin tetrahedron can still
    flatten or turn over; a small Δv keeps every tetrahedron positive. Both initialisers start from Δv = 0.
    """

    def __init__(self, resolution: int = 32, colour_resolution: int = 32):
        super().__init__()
        positions, tets = tetrahedral_grid(resolution)
        self.resolution = resolution
        self.register_buffer("grid_positions", positions, persistent=False)  # (V, 3)
        self.register_buffer("tets", tets, persistent=False)  # (T, 4)
        self.sdf = nn.Parameter(torch.zeros(positions.shape[0]))  # s (V,)
        self.deformation = nn.Parameter(torch.zeros_like(positions))  # Δv before tanh (V, 3)
        self.colour = VoxelColourField(colour_resolution)

    def deformed_positions(self) -> Tensor:
        """v_i + (h/2)·tanh(Δv_i): the grid vertices after the bounded deformation, (V, 3)."""
        half_cell = 1.0 / self.resolution
        return self.grid_positions + half_cell * torch.tanh(self.deformation)

    def forward(self) -> tuple[Tensor, Tensor]:
        return marching_tetrahedra(self.deformed_positions(), self.sdf, self.tets)

    @torch.no_grad()
    def init_from_sdf(self, sdf: Callable[[Tensor], Tensor] | Tensor) -> DMTet:
        """Set s from an SDF (inside where < 0): a callable points (N, 3) → (N,) (a Pocket World object's
        ``obj.sdf``) or a grid (R', R', R') over [−1, 1]³ indexed [x, y, z] (``world_render.sdf_grid``), read by
        trilinear interpolation. Resets Δv to 0. Returns self."""
        points = self.grid_positions
        if callable(sdf):
            values = torch.cat([sdf(chunk) for chunk in points.split(65536)])
        elif isinstance(sdf, Tensor) and sdf.ndim == 3 and len(set(sdf.shape)) == 1:
            values = trilinear(sdf[None, None].float(), points)[:, 0]
        else:
            shape = tuple(sdf.shape) if isinstance(sdf, Tensor) else type(sdf).__name__
            raise ValueError(f"expected an SDF callable points (N, 3) → (N,) or a cubic grid (R, R, R), got {shape}")
        if values.shape != self.sdf.shape:
            raise ValueError(f"the SDF callable returned shape {tuple(values.shape)} for {points.shape[0]} points; "
                             "it must return one value per point, shape (N,)")
        self.sdf.copy_(values)
        self.deformation.zero_()
        return self

    @torch.no_grad()
    def init_from_field(self, field: nn.Module, threshold: float | str = "auto") -> float:
        """Magic3D's hand-over from the coarse stage: s = ln τ − ln σ(v_i) at every grid vertex (inside where
        σ > τ; ``density_to_sdf``), with τ from ``density_threshold``; the colour grid takes the field's colour at
        its own points (logit of c, so the fine stage starts with the coarse colours). ``field`` is called as
        field(points (N, 3), view_dirs (N, 3)) → (σ (N,), rgb (N, 3)) (``GridField``, ``NeRFField``).
        Resets Δv to 0. Returns τ.

        s is a log-density, not a distance: only its sign and its ratios along each edge matter to the extracted
        surface, which sits where σ crosses τ (up to the linear interpolation of ln σ).
        """
        sigma, _ = query_field(field, self.grid_positions)
        tau = density_threshold(sigma, threshold)
        flat = sigma.max() - sigma.min() <= 1e-5 * sigma.abs().max()  # a constant field: τ splits rounding noise
        if flat or not sigma.min() < tau < sigma.max():
            raise ValueError(f"the density never crosses τ = {tau:.3g} (range {sigma.min():.3g}..{sigma.max():.3g}):"
                             " nothing to mesh; choose a threshold inside that range")
        self.sdf.copy_(density_to_sdf(sigma, tau))
        self.deformation.zero_()
        _, rgb = query_field(field, self.colour.grid_points())
        logits = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))  # (G³, 3)
        self.colour.logits.copy_(logits.T.reshape_as(self.colour.logits))
        return tau

    @torch.no_grad()
    def to_trimesh(self) -> trimesh.Trimesh:
        """The current surface as a ``trimesh.Trimesh`` with vertex colours from the colour field, ready for
        ``mesh.export`` (GLB)."""
        vertices, faces = self()
        rgb = self.colour(vertices).clamp(0, 1).numpy()
        colours = np.concatenate([(rgb * 255).round(), np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
        return trimesh.Trimesh(vertices=vertices.numpy(), faces=faces.numpy(), vertex_colors=colours, process=False)
