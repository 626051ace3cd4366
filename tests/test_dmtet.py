"""DMTet (text3d_edu/dmtet.py): the tetrahedral grid, differentiable marching tetrahedra, initialisation, export."""

import io
import math

import numpy as np
import pytest
import torch
import trimesh

from text3d_edu.dmtet import (
    DMTet,
    density_to_sdf,
    interpolate_edge,
    marching_tetrahedra,
    signed_volumes,
    tetrahedral_grid,
)
from text3d_edu.fields import GridField
from text3d_edu.mesh import marching_cubes_mesh
from text3d_edu.toyworld import make_object
from text3d_edu.world_render import sdf_grid

RADIUS = 0.6


def sphere_sdf(points):
    return points.norm(dim=-1) - RADIUS


@pytest.fixture(scope="module")
def sphere_mesh():
    return DMTet(resolution=32).init_from_sdf(sphere_sdf).to_trimesh()


def test_grid_is_positively_oriented_and_fills_the_cube():
    resolution = 4
    positions, tets = tetrahedral_grid(resolution)
    assert positions.shape == ((resolution + 1) ** 3, 3) and tets.shape == (6 * resolution**3, 4)
    volumes = signed_volumes(positions, tets)
    assert (volumes > 0).all(), f"{int((volumes <= 0).sum())} tetrahedra are inside-out or flat"
    assert volumes.sum().item() == pytest.approx(8.0, rel=1e-5)
    # conforming: every triangle is shared by two tetrahedra, except those on the cube's 6 faces (2 per square)
    triangles = tets[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3).sort(dim=1).values
    _, counts = torch.unique(triangles, dim=0, return_counts=True)
    assert counts.max() == 2 and int((counts == 1).sum()) == 6 * 2 * resolution**2


def test_sphere_gives_a_closed_mesh_on_the_surface(sphere_mesh):
    assert sphere_mesh.is_watertight
    assert len(sphere_mesh.split(only_watertight=False)) == 1
    radii = np.linalg.norm(sphere_mesh.vertices, axis=1)
    assert np.abs(radii - RADIUS).max() < 0.01  # a cell is 2/32 = 0.0625; chords cut inside by < 0.004
    assert sphere_mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)


def test_normals_point_outward(sphere_mesh):
    outward = sphere_mesh.triangles_center / np.linalg.norm(sphere_mesh.triangles_center, axis=1, keepdims=True)
    assert ((sphere_mesh.face_normals * outward).sum(1) > 0.9).all()
    # and on a torus (saddle-shaped, concave inside the ring): normals agree with the SDF gradient ∇s everywhere
    major, minor = 0.55, 0.25

    def torus_sdf(points):
        ring = torch.stack([points[:, [0, 2]].norm(dim=-1) - major, points[:, 1]], dim=-1)
        return ring.norm(dim=-1) - minor

    vertices, faces = DMTet(resolution=32).init_from_sdf(torus_sdf)()
    corners = vertices.detach()[faces]  # (F, 3, 3)
    normals = torch.nn.functional.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0],
                                                               corners[:, 2] - corners[:, 0]), dim=-1)
    centres = corners.mean(1).requires_grad_()
    gradient = torch.autograd.grad(torus_sdf(centres).sum(), centres)[0]
    assert ((normals * gradient).sum(-1) > 0.9).all()
    torus = trimesh.Trimesh(vertices.detach().numpy(), faces.numpy(), process=False)
    assert torus.is_watertight and torus.euler_number == 0  # one handle: genus 1
    assert torus.volume == pytest.approx(2 * math.pi**2 * major * minor**2, rel=0.02)


def test_edge_vertex_is_the_zero_of_a_linear_sdf():
    p_a, p_b = torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([[0.5, 0.4, -0.1]])
    s_a, s_b = torch.tensor([-0.3]), torch.tensor([0.9])
    vertex = interpolate_edge(p_a, p_b, s_a, s_b)
    torch.testing.assert_close(vertex, p_a + 0.25 * (p_b - p_a))  # s_a + t (s_b − s_a) = 0 at t = 1/4
    # on a whole grid: every vertex of the plane n·x = c lies on it
    normal, offset = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0), 0.17
    positions, tets = tetrahedral_grid(6)
    vertices, faces = marching_tetrahedra(positions, positions @ normal - offset, tets)
    assert faces.shape[0] > 0
    assert (vertices @ normal - offset).abs().max() < 1e-6


def test_gradients_match_finite_differences():
    # one tetrahedron, vertex 0 inside: the three vertices on its edges depend on s and on the positions
    positions = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    tets = torch.tensor([[0, 1, 2, 3]])
    sdf = torch.tensor([-0.3, 0.5, 0.7, 0.2], dtype=torch.float64)

    def surface(s, p):
        vertices, faces = marching_tetrahedra(p, s, tets)
        assert faces.shape == (1, 3)
        return vertices

    analytic = torch.autograd.functional.jacobian(lambda s: surface(s, positions), sdf)  # (3, 3, 4)
    step = 1e-6
    numeric = torch.stack([(surface(sdf + step * e, positions) - surface(sdf - step * e, positions)) / (2 * step)
                           for e in torch.eye(4, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert analytic[..., 0].abs().sum() > 0  # the inside vertex's s moves all three

    # through the module: s and the tanh-bounded Δv both receive gradients, matching finite differences
    model = DMTet(resolution=4).double().init_from_sdf(sphere_sdf)
    weights = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss():
        vertices, _ = model()
        return (vertices * weights[: vertices.shape[0]]).sum()

    loss().backward()
    assert model.sdf.grad.abs().sum() > 0 and model.deformation.grad.abs().sum() > 0
    # only the vertices on crossing edges matter to the surface
    assert 0 < int((model.sdf.grad != 0).sum()) < model.sdf.numel() // 2
    index = np.unravel_index(model.deformation.grad.abs().argmax().item(), model.deformation.shape)
    with torch.no_grad():
        model.deformation[index] += step
        up = loss().item()
        model.deformation[index] -= 2 * step
        down = loss().item()
    assert model.deformation.grad[index].item() == pytest.approx((up - down) / (2 * step), rel=1e-5)
    # the deformation is bounded: however large Δv, a vertex moves at most half a cell (1/R) along each axis
    with torch.no_grad():
        model.deformation.fill_(1e3)
    assert (model.deformed_positions() - model.grid_positions).abs().max() <= 1 / 4 + 1e-12


def test_pocket_world_object_agrees_with_marching_cubes():
    obj = make_object("snowman", "white")
    model = DMTet(resolution=32).init_from_sdf(sdf_grid(obj, 33))  # the grid's lattice is the SDF grid's
    mesh = model.to_trimesh()
    reference = marching_cubes_mesh(sdf_grid(obj, 33).numpy(), level=0.0, inside_is_below=True)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume == pytest.approx(reference.volume, rel=0.03)
    # the vertices lie on the true surface: closely on average, within half a cell (1/32) where the balls meet
    # (there the SDF, a min of spheres, has a crease that linear interpolation along an edge cuts across)
    distance = obj.sdf(torch.as_tensor(mesh.vertices, dtype=torch.float32)).abs()
    assert distance.mean() < 0.002 and distance.max() < 1 / 32
    # the callable and the grid give the same surface: the grid vertices are the SDF grid's samples
    vertices, _ = DMTet(resolution=32).init_from_sdf(obj.sdf)()
    torch.testing.assert_close(vertices.detach(), torch.as_tensor(mesh.vertices, dtype=torch.float32),
                               atol=1e-4, rtol=0)


def test_init_from_grid_field_blob():
    field = GridField(resolution=32, init="blob")
    with torch.no_grad():
        field.colour_logits[:, 0] = 3.0  # red
        field.colour_logits[:, 1:] = -3.0
    model = DMTet(resolution=24, colour_resolution=8)
    tau = model.init_from_field(field)
    sigma_at_vertices = field(model.grid_positions, torch.zeros_like(model.grid_positions))[0]
    assert tau == pytest.approx(sigma_at_vertices[sigma_at_vertices > 1e-5].mean().item(), rel=1e-5)
    mesh = model.to_trimesh()
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    # the surface is where σ = τ: the field's density at the mesh vertices is τ, to the interpolation error
    sigma_on_surface = field(torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.zeros(len(mesh.vertices), 3))[0]
    assert (sigma_on_surface / tau - 1).abs().max() < 0.05
    assert (mesh.visual.vertex_colors[:, 0] > 200).all() and (mesh.visual.vertex_colors[:, 1:3] < 50).all()
    # a fixed threshold is used as given
    assert model.init_from_field(field, threshold=5.0) == 5.0
    # and the mesh survives a round trip through GLB
    loaded = trimesh.load(io.BytesIO(mesh.export(file_type="glb")), file_type="glb", force="mesh")
    assert len(loaded.faces) == len(mesh.faces)


def test_bad_input_raises_with_the_fix():
    with pytest.raises(ValueError, match="positive number of cells"):
        tetrahedral_grid(0)
    positions, tets = tetrahedral_grid(2)
    with pytest.raises(ValueError, match=r"positions \(V, 3\) and sdf \(V,\)"):
        marching_tetrahedra(positions, torch.zeros(5), tets)
    with pytest.raises(ValueError, match=r"tets of shape \(T, 4\)"):
        marching_tetrahedra(positions, torch.zeros(len(positions)), tets[:, :3])
    with pytest.raises(ValueError, match="never changes sign.*negative inside the object"):
        marching_tetrahedra(positions, torch.ones(len(positions)), tets)
    model = DMTet(resolution=4)
    with pytest.raises(ValueError, match=r"cubic grid \(R, R, R\)"):
        model.init_from_sdf(torch.zeros(8, 8, 4))
    with pytest.raises(ValueError, match="one value per point"):
        model.init_from_sdf(lambda points: points)
    with pytest.raises(ValueError, match="never crosses.*choose a threshold inside"):
        model.init_from_field(GridField(resolution=8, init="empty"))  # σ = 0.01 everywhere: τ = 0.01
    with pytest.raises(ValueError, match="empty everywhere.*train the coarse field longer"):
        model.init_from_field(GridField(resolution=8, init="empty", empty_density=1e-9))
    with pytest.raises(ValueError, match="never crosses"):
        model.init_from_field(GridField(resolution=8, init="blob"), threshold=1e3)
    with pytest.raises(ValueError, match="use 'auto' or a number"):
        model.init_from_field(GridField(resolution=8, init="blob"), threshold="mean")


def test_the_hand_over_surface_sits_where_the_fields_own_density_crosses_tau():
    # a GridField interpolates ln σ trilinearly; here ln σ = 6x (σ from e⁻⁶ to e⁶ ≈ 400 across the cube, as steep
    # as an SDS field's surface), so σ = τ = e³ on the plane x = ½, halfway between two grid vertices (R = 6)
    field = GridField(resolution=16)
    axis = torch.linspace(-1, 1, 16)
    with torch.no_grad():
        field.log_sigma.copy_((6 * axis)[:, None, None].expand(16, 16, 16)[None, None])
    model = DMTet(resolution=6, colour_resolution=4)
    tau = model.init_from_field(field, threshold=math.exp(3.0))
    vertices, _ = model()
    assert (vertices[:, 0] - 0.5).abs().max() < 1e-3  # float32 round-off
    # s = τ − σ (density units) puts the plane a quarter of a cell outwards, at x ≈ 0.42
    sigma = field(model.grid_positions, torch.zeros_like(model.grid_positions))[0]
    linear, _ = marching_tetrahedra(model.grid_positions, tau - sigma, model.tets)
    assert (linear[:, 0] - 0.5).abs().min() > 0.05
    assert density_to_sdf(torch.tensor([0.0, 20.0, 400.0]), 20.0).tolist() == pytest.approx(
        [math.log(20.0) - math.log(1e-6), 0.0, math.log(20.0) - math.log(400.0)])
