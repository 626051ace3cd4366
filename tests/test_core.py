"""Unit tests of the 3D core: cameras, volume rendering against closed forms, fields."""

import math

import pytest
import torch

from text3d_edu import cameras, fields, rendering


def test_look_at_camera_sits_at_eye_and_looks_at_origin():
    cams = cameras.orbit_cameras([0.0, 90.0], elevation=0.0, radius=3.0, resolution=4)
    # azimuth 0: on +z; azimuth 90: on +x (the object's right side)
    assert torch.allclose(cams.c2w[0, :3, 3], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)
    assert torch.allclose(cams.c2w[1, :3, 3], torch.tensor([3.0, 0.0, 0.0]), atol=1e-6)
    rotation = cams.c2w[:, :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(-cams.c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_rays_of_a_known_camera():
    cams = cameras.orbit_cameras([0.0], elevation=0.0, radius=3.0, fov_degrees=90.0, resolution=2)
    origins, directions = cameras.generate_rays(cams)
    assert origins.shape == directions.shape == (1, 2, 2, 3)
    assert torch.allclose(origins, torch.tensor([0.0, 0.0, 3.0]).expand_as(origins))
    # fov 90°, 2×2 pixels: focal = 1 px; pixel centres at ±0.5 px → directions (±0.5, ∓0.5, −1) normalised
    expected = torch.nn.functional.normalize(torch.tensor([[[-0.5, 0.5, -1.0], [0.5, 0.5, -1.0]],
                                                           [[-0.5, -0.5, -1.0], [0.5, -0.5, -1.0]]]), dim=-1)
    assert torch.allclose(directions[0], expected, atol=1e-6)
    assert cams.focal == pytest.approx(1.0)


def test_straight_overhead_camera_is_well_defined():
    cams = cameras.orbit_cameras([0.0], elevation=90.0, radius=2.0)
    assert torch.isfinite(cams.c2w).all()
    assert torch.allclose(-cams.c2w[0, :3, 2], torch.tensor([0.0, -1.0, 0.0]), atol=1e-5)


@pytest.mark.parametrize(("azimuth", "elevation", "label"), [
    (0, 0, "front"), (30, 10, "front"), (-44, 0, "front"), (90, 0, "side"), (-100, 0, "side"),
    (180, 0, "back"), (-170, 30, "back"), (520, 0, "back"), (0, 75, "overhead"),
])
def test_view_labels(azimuth, elevation, label):
    assert cameras.view_label(azimuth, elevation) == label


def test_the_generation_camera_sampler_produces_every_view_label():
    from text3d_edu.generate import GenerateConfig

    config = GenerateConfig()
    cams = cameras.sample_cameras(400, torch.Generator().manual_seed(0), elevation_range=config.elevation_range,
                                  radius_range=config.radius_range)
    labels = [cameras.view_label(a, e) for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist())]
    assert set(labels) == set(cameras.VIEW_LABELS)
    assert labels.count("overhead") >= 40  # DreamFusion: elevation U(−10°, 90°), "overhead" above 60° (30 %)


def test_sampled_cameras_respect_ranges_and_seed():
    g = torch.Generator().manual_seed(3)
    cams = cameras.sample_cameras(64, g, elevation_range=(0, 30), radius_range=(2.5, 3.0))
    assert cams.elevation.min() >= 0 and cams.elevation.max() <= 30
    eye_distance = cams.c2w[:, :3, 3].norm(dim=-1)
    assert torch.allclose(eye_distance, cams.radius, atol=1e-5)
    again = cameras.sample_cameras(64, torch.Generator().manual_seed(3), elevation_range=(0, 30),
                                   radius_range=(2.5, 3.0))
    assert torch.equal(cams.c2w, again.c2w)


def test_constant_density_gives_closed_form_opacity():
    sigma_value, length, n = 0.7, 2.0, 128
    t = (torch.arange(n) + 0.5)[None] * length / n
    deltas = torch.full_like(t, length / n)
    sigma = torch.full_like(t, sigma_value)
    rgb = torch.ones(1, n, 3) * torch.tensor([0.2, 0.4, 0.6])
    out = rendering.composite(sigma, rgb, t, deltas, background=torch.zeros(3))
    assert out.opacity.item() == pytest.approx(1 - math.exp(-sigma_value * length), rel=1e-5)
    assert out.weights.sum().item() <= 1.0
    assert torch.allclose(out.rgb, out.opacity * torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)


def test_transmittance_is_exclusive():
    alpha = torch.tensor([[0.5, 0.5, 0.5]])
    assert torch.allclose(rendering.transmittance(alpha), torch.tensor([[1.0, 0.5, 0.25]]), atol=1e-6)


def test_opaque_wall_gives_its_depth_and_hides_what_is_behind():
    t = torch.linspace(0.05, 1.95, 20)[None]
    deltas = torch.full_like(t, 0.1)
    sigma = torch.where(t > 1.0, torch.tensor(1e4), torch.tensor(0.0))
    rgb = torch.zeros(1, 20, 3)
    rgb[0, t[0] > 1.0] = torch.tensor([1.0, 0.0, 0.0])
    out = rendering.composite(sigma, rgb, t, deltas, background=torch.tensor([0.0, 0.0, 1.0]))
    first_inside = t[0][t[0] > 1.0][0].item()
    assert out.depth.item() == pytest.approx(first_inside, abs=1e-4)
    assert torch.allclose(out.rgb, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-4)


def test_empty_space_shows_background():
    field = fields.GridField(8, init="empty", empty_density=1e-6)
    cams = cameras.orbit_cameras([0.0], resolution=4)
    image = rendering.render_image(field, cams, n_samples=8, background=(0.1, 0.2, 0.3))["rgb"]
    assert torch.allclose(image, torch.tensor([0.1, 0.2, 0.3]).expand_as(image), atol=1e-3)


def test_ray_box_intersection():
    o = torch.tensor([[0.0, 0.0, 3.0], [5.0, 5.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far = rendering.ray_box_intersection(o, d)
    assert near[0].item() == pytest.approx(2.0) and far[0].item() == pytest.approx(4.0)
    assert near[1] == far[1]  # a miss has zero length


def test_positional_encoding_layout():
    pe = fields.PositionalEncoding(2)
    p = torch.tensor([[0.25, 0.0, 1.0]])
    out = pe(p)
    assert out.shape == (1, pe.output_dim()) == (1, 15)
    assert torch.allclose(out[0, :3], p[0])
    assert torch.allclose(out[0, 3:6], torch.sin(math.pi * p[0]), atol=1e-6)
    assert torch.allclose(out[0, 6:9], torch.sin(2 * math.pi * p[0]), atol=1e-6)
    assert torch.allclose(out[0, 9:12], torch.cos(math.pi * p[0]), atol=1e-6)


@pytest.mark.parametrize("field", [fields.NeRFField(width=32), fields.GridField(16, init="blob")])
def test_fields_share_one_interface(field):
    points = torch.rand(10, 3) * 2 - 1
    sigma, rgb = field(points, torch.nn.functional.normalize(torch.randn(10, 3), dim=-1))
    assert sigma.shape == (10,) and rgb.shape == (10, 3)
    assert (sigma >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        field(points[:, :2], points[:, :2])


def test_grid_field_is_indexed_x_y_z():
    field = fields.GridField(5)
    with torch.no_grad():
        field.log_sigma.fill_(-5.0)
        field.log_sigma[0, 0, 4, 2, 2] = 5.0  # the vertex at x = +1, y = 0, z = 0
    sigma, _ = field(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.zeros(2, 3))
    assert sigma[0] > 100 and sigma[1] < 0.01


def test_blob_init_is_dense_in_the_centre_only():
    field = fields.GridField(16, init="blob")
    sigma, _ = field(torch.tensor([[0.0, 0.0, 0.0], [0.95, 0.95, 0.95]]), torch.zeros(2, 3))
    assert sigma[0] > 5 and sigma[1] < 0.1


def test_composite_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="expected sigma"):
        rendering.composite(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4))
