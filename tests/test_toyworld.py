"""The Pocket World: primitives' signs and distances, the catalogue, determinism, exports."""

import numpy as np
import pytest
import torch
import trimesh

from text3d_edu import cameras, mesh, sdf, toyworld, world_render


def test_primitive_distances():
    p = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    assert torch.allclose(sdf.sphere((0, 0, 0), 1.0)(p), torch.tensor([-1.0, 1.0, -0.5]))
    assert torch.allclose(sdf.box((0, 0, 0), (1, 1, 1))(p), torch.tensor([-1.0, 1.0, -0.5]))
    assert torch.allclose(sdf.cylinder((0, 0, 0), 0.5, 1.0)(p), torch.tensor([-0.5, 1.5, -0.5]))
    cone = sdf.capped_cone((0, 0, 0), 0.5, 0.5, 0.0)  # apex at y = +0.5
    assert cone(torch.tensor([[0.0, 0.6, 0.0]])).item() == pytest.approx(0.1, abs=1e-6)
    assert cone(torch.tensor([[0.0, 0.0, 0.0]])).item() < 0
    ring = sdf.torus((0, 0, 0), 1.0, 0.25)
    assert ring(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])).tolist() == pytest.approx([-0.25, 0.75])


def test_csg_and_rotation():
    a, b = sdf.sphere((0, 0, 0), 1.0), sdf.sphere((1, 0, 0), 1.0)
    p = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    assert (sdf.subtract(a, b)(p) < 0).tolist() == [True, False]
    assert (sdf.intersect(a, b)(p) < 0).tolist() == [False, True]
    lying = sdf.cylinder((0, 0, 0), 0.2, 1.0, rotation=sdf.rotation_z(90))  # axis along x
    assert lying(torch.tensor([[0.9, 0.0, 0.0]])).item() < 0 < lying(torch.tensor([[0.0, 0.9, 0.0]])).item()


def test_catalogue_size_and_captions():
    assert len(toyworld.KINDS) >= 12 and len(toyworld.COLOURS) >= 8
    assert toyworld.make_object("table", "brown", "tall").caption == "a tall brown table"
    assert toyworld.make_object("mug", "red").caption == "a red mug"
    stack = toyworld.make_object("cube stack", "red", second_colour="blue")
    assert stack.caption == "a small red cube on top of a large blue cube"
    assert toyworld.parse_caption(stack.caption).second_colour == "blue"
    assert toyworld.parse_caption("A tall brown table.").kind == "table"
    assert toyworld.make_object("duck", "orange").caption == "an orange duck"  # English articles
    assert toyworld.make_object("duck", "orange", "small").caption == "a small orange duck"
    assert "an orange duck" in toyworld.catalogue_captions() and "an" in toyworld.vocabulary()


def test_unknown_words_list_the_known_ones():
    with pytest.raises(ValueError, match="'table'"):
        toyworld.make_object("bulldozer", "red")
    with pytest.raises(ValueError, match="'red'"):
        toyworld.make_object("table", "teal")
    with pytest.raises(ValueError, match="colours: red"):
        toyworld.parse_caption("a teal table")
    with pytest.raises(ValueError, match="empty caption"):
        toyworld.parse_caption("   ")


@pytest.mark.parametrize("kind", list(toyworld.KINDS))
def test_every_kind_fits_the_bounds_in_every_form_and_has_a_distinct_front(kind):
    for form in toyworld.FORMS:
        obj = toyworld.make_object(kind, "red", form, seed=5)
        grid = world_render.sdf_grid(obj, 24, bound=1.0)
        border = torch.cat([grid[0].flatten(), grid[-1].flatten(), grid[:, 0].flatten(), grid[:, -1].flatten(),
                            grid[:, :, 0].flatten(), grid[:, :, -1].flatten()])
        assert (border > 0).all(), f"{obj.caption} leaves the cube [-1, 1]^3"
        assert (grid < 0).any(), f"{obj.caption} is empty"
    obj = toyworld.make_object(kind, "green")
    views = world_render.render(obj, cameras.orbit_cameras([0.0, 180.0], 15.0, resolution=32))
    mirrored_back = views["rgb"][1].flip(1)  # an object symmetric front-to-back matches its mirrored back view
    covered = (views["alpha"][0] > 0) | (views["alpha"][1].flip(1) > 0)
    difference = (views["rgb"][0] - mirrored_back).abs().sum(-1)[covered].mean()
    assert difference > 0.05, f"{kind}: front and back look the same"


def test_rendering_is_deterministic_and_sized():
    obj = toyworld.sample_object(7)
    a = world_render.posed_views(obj, 3, resolution=32, seed=1)
    b = world_render.posed_views(toyworld.sample_object(7), 3, resolution=32, seed=1)
    assert a["rgb"].shape == (3, 32, 32, 3) and a["alpha"].shape == (3, 32, 32)
    assert torch.equal(a["rgb"], b["rgb"])
    assert 0.02 < a["alpha"].mean() < 0.9
    assert ((a["depth"] > 0) == (a["alpha"] > 0)).all()


def test_object_is_coloured_by_its_colour():
    obj = toyworld.make_object("house", "blue")
    view = world_render.render(obj, cameras.orbit_cameras([30.0], 10.0, resolution=32))
    covered = view["alpha"][0] > 0.99
    pixels = view["rgb"][0][covered]
    blueish = (pixels[:, 2] > pixels[:, 0] + 0.15).float().mean()
    assert blueish > 0.3


def test_surface_points_lie_on_the_surface():
    obj = toyworld.make_object("snowman", "white")
    points, colours = world_render.surface_points(obj, 500, seed=0)
    assert points.shape == colours.shape == (500, 3)
    assert obj.sdf(points).abs().max() < 0.02


def test_mesh_export_round_trip(tmp_path):
    obj = toyworld.make_object("mug", "yellow")
    m = world_render.mesh(obj, resolution=40)
    assert m.is_watertight or len(m.faces) > 500
    vertices = torch.as_tensor(np.asarray(m.vertices), dtype=torch.float32)
    assert obj.sdf(vertices).abs().max() < 0.06  # marching cubes vertices sit on the zero level set
    for suffix in (".glb", ".ply", ".obj"):
        path = mesh.export(m, tmp_path / f"mug{suffix}")
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(m.faces)
        if suffix != ".obj":
            assert np.array_equal(np.asarray(loaded.visual.vertex_colors), np.asarray(m.visual.vertex_colors))
    with pytest.raises(ValueError, match=".glb"):
        mesh.export(m, tmp_path / "mug.stl")


def test_marching_cubes_normals_point_outward():
    """Faces wound counter-clockwise seen from outside, for an SDF and for a density: a positive volume, and each
    face's normal along the sphere's outward direction."""
    axis = np.linspace(-1, 1, 32)
    radius = np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij")), axis=0)
    for volume, level, inside_is_below in ((radius - 0.6, 0.0, True), (10 * np.exp(-radius**2 / 0.2), 5.0, False)):
        m = mesh.marching_cubes_mesh(volume, level, inside_is_below)
        assert m.volume > 0
        outward = m.triangles_center / np.linalg.norm(m.triangles_center, axis=1, keepdims=True)
        assert ((m.face_normals * outward).sum(1) > 0.5).all()
    assert mesh.marching_cubes_mesh(radius - 0.6, 0.0, True).volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.02)


def test_save_views_writes_nerf_synthetic_layout(tmp_path):
    import json

    out = world_render.save_views(toyworld.make_object("duck", "yellow"), tmp_path, n_views=3, resolution=16)
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["caption"] == "a yellow duck" and len(meta["frames"]) == 3
    assert all((out / f["file_path"]).exists() for f in meta["frames"])
