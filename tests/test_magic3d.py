"""Magic3D's two stages (``text3d_edu.magic3d``): the normal-consistency price, the fine stage's gradients, the
outputs and their re-rendering, resume, and failing fast without the latent prior's weights.

The pipeline tests use a small, untrained latent prior (its VAE and U-Net at random weights): they check the
plumbing, not the quality, which ``benchmarks/magic3d.py`` measures with the trained prior.
"""

import json

import pytest
import torch
import trimesh

from text3d_edu.dmtet import DMTet
from text3d_edu.generate import GenerateConfig, judge_cameras
from text3d_edu.magic3d import (
    Magic3DConfig,
    fine_loss,
    generate_magic3d,
    mesh_views,
    normal_consistency,
    surface_colours,
    vertex_normals,
)
from text3d_edu.priors import PromptCache, pocket_latent
from text3d_edu.priors.pocket_clip import load_clip_model
from text3d_edu.results import load_result
from text3d_edu.world_render import AMBIENT, FILL_LIGHT, KEY_LIGHT, lighting


@pytest.fixture(scope="module")
def latent_prior():
    return pocket_latent.PocketLatentDiffusion(pocket_latent.build_latent_unet(16, width=16),
                                               pocket_latent.build_vae(16, width=8), load_clip_model())


def tiny_config(**kwargs) -> Magic3DConfig:
    return Magic3DConfig(coarse=GenerateConfig(method="sds", steps=3, grid_resolution=16, checkpoint_every=2,
                                                blob_density=30.0),
                         dmtet_resolution=16, colour_resolution=16, cameras_per_step=2, checkpoint_every=2, **kwargs)


def test_normal_consistency_is_zero_on_a_plane_and_one_minus_cos_on_a_fold():
    square = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    assert normal_consistency(square, faces).item() == pytest.approx(0.0, abs=1e-6)
    folded = square.clone()
    folded[3] = torch.tensor([0.0, 0.0, 1.0])  # the second triangle stands up on the diagonal: a 90° fold
    faces_fold = torch.tensor([[0, 1, 2], [0, 2, 3]])
    n_a = torch.tensor([0.0, 0.0, 1.0])
    n_b = torch.linalg.cross(folded[2] - folded[0], folded[3] - folded[0])
    expected = 1 - (n_a @ n_b / n_b.norm()).item()
    assert normal_consistency(folded, faces_fold).item() == pytest.approx(expected, abs=1e-6)
    # a closed cube: 18 edges shared by two triangles, 6 of them inside a side (cos 1), 12 at 90° (cos 0)
    box = trimesh.creation.box()
    value = normal_consistency(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces))
    assert value.item() == pytest.approx(12 / 18, abs=1e-5)
    vertices = torch.tensor(box.vertices, dtype=torch.float32).requires_grad_()
    normal_consistency(vertices, torch.tensor(box.faces)).backward()
    assert vertices.grad is not None and torch.isfinite(vertices.grad).all()


def test_the_fine_loss_reaches_the_sdf_the_deformation_and_the_colour(latent_prior):
    dmtet = DMTet(16, 16).init_from_sdf(lambda p: p.norm(dim=-1) - 0.6)
    config = tiny_config()
    loss, info = fine_loss(dmtet, latent_prior, "a red mug", PromptCache(latent_prior),
                           latent_prior.encode_unconditional(1), config, torch.Generator().manual_seed(0))
    loss.backward()
    assert info["faces"] > 100
    for name, parameter in (("sdf", dmtet.sdf), ("deformation", dmtet.deformation),
                            ("colour", dmtet.colour.logits)):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_generate_magic3d_writes_a_mesh_result_that_render_reproduces(tmp_path, latent_prior):
    out = tmp_path / "mug"
    dmtet, metrics = generate_magic3d("a red mug", out, tiny_config(steps=3), fine_prior=latent_prior,
                                      progress=False)
    for name in ("views.png", "turntable.gif", "mesh.glb", "metrics.json", "checkpoint.pt", "coarse/metrics.json",
                 "coarse/checkpoint.pt"):
        assert (out / name).is_file(), name
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["representation"] == "mesh" and stored["method"] == "magic3d"
    assert stored["faces"] > 0 and 0 <= stored["silhouette_iou"] <= 1 and len(stored["judged_as"]) == 8
    assert set(stored["coarse"]) >= {"kind_acc", "silhouette_iou"}
    assert stored["components"] >= 1 and 0 < stored["main_component_share"] <= 1
    assert stored["seconds"] == pytest.approx(stored["seconds_coarse"] + stored["seconds_fine"], abs=0.11)
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(glb.faces) == stored["faces"]
    cameras = judge_cameras(32)
    again = load_result(out).render(cameras)
    assert torch.allclose(again, mesh_views(dmtet, cameras), atol=1e-6)
    with pytest.raises(ValueError, match="already holds a result"):
        generate_magic3d("a red mug", out, tiny_config(steps=3), fine_prior=latent_prior, progress=False)


def test_resume_continues_the_fine_stage_exactly(tmp_path, latent_prior):
    whole, _ = generate_magic3d("a blue chair", None, tiny_config(steps=4), fine_prior=latent_prior, progress=False)
    generate_magic3d("a blue chair", tmp_path / "split", tiny_config(steps=2), fine_prior=latent_prior,
                     progress=False)
    (tmp_path / "split" / "metrics.json").unlink()  # as if stopped after the checkpoint of step 2
    resumed, metrics = generate_magic3d("a blue chair", tmp_path / "split", tiny_config(steps=4),
                                        fine_prior=latent_prior, resume=True, progress=False)
    assert metrics["steps"] == 4
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_without_latent_weights_it_fails_before_stage_one_writes_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(pocket_latent, "WEIGHTS_DIR", tmp_path / "no_weights")
    with pytest.raises(FileNotFoundError, match="train-pocket-latent"):
        generate_magic3d("a red mug", tmp_path / "out", tiny_config(), progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="coarse stage is SDS"):
        Magic3DConfig(coarse=GenerateConfig(method="clip"))
    with pytest.raises(ValueError, match="positive"):
        Magic3DConfig(steps=0)
    with pytest.raises(ValueError, match="empty prompt"):
        generate_magic3d("  ", None, tiny_config(), fine_prior=object(), clip=object(), prior=object())


def test_the_hand_over_keeps_a_thin_part_that_a_fixed_threshold_cuts_off():
    """A dense ball (σ = 30) on a thin, fainter stem (σ = 8, radius 0.2): the stem is seen (opacity
    1 − exp(−8 · 0.4) ≈ 0.96 across it) but never reaches τ = 10. The silhouette-matched τ keeps it."""
    from text3d_edu.fields import GridField
    from text3d_edu.magic3d import silhouette_threshold

    field = GridField(48)
    axis = torch.linspace(-1, 1, 48)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    ball = (x**2 + (y - 0.3) ** 2 + z**2) < 0.35**2
    stem = (x**2 + z**2 < 0.2**2) & (y > -0.6) & (y < 0.3)
    sigma = torch.full_like(x, 0.01)
    sigma[stem] = 8.0
    sigma[ball] = 30.0
    with torch.no_grad():
        field.log_sigma.copy_(sigma.log()[None, None])
    dmtet = DMTet(32, 16)
    tau = silhouette_threshold(dmtet, field, judge_cameras(32))
    assert tau < 8.0
    dmtet.init_from_field(field, tau)
    vertices, _ = dmtet()
    assert (vertices[:, 1] < -0.3).any()  # the stem's lower half is meshed
    dmtet.init_from_field(field, 10.0)
    vertices, _ = dmtet()
    assert not (vertices[:, 1] < -0.1).any()  # τ = 10 keeps the ball only


def test_the_fine_stage_shades_its_mesh_as_the_pocket_world_lights_its_objects():
    dmtet = DMTet(24, 4).init_from_sdf(lambda p: p.norm(dim=-1) - 0.6)
    with torch.no_grad():
        vertices, faces = dmtet()
        normals = vertex_normals(vertices, faces)
        albedo = dmtet.colour(vertices)
        shaded = surface_colours(dmtet, vertices, faces)
    outward = vertices / vertices.norm(dim=-1, keepdim=True)
    assert (normals * outward).sum(-1).min() > 0.98  # a sphere's vertex normals point away from its centre
    assert torch.allclose(shaded, albedo * lighting(outward)[:, None], atol=0.03)
    assert torch.equal(surface_colours(dmtet, vertices, faces, shaded=False).detach(), albedo)
    # lit from the key light's side, dark (ambient only) where neither light reaches
    key_side = (outward @ KEY_LIGHT).argmax()
    dark = ((outward @ KEY_LIGHT < 0) & (outward @ FILL_LIGHT < 0)).nonzero()[0, 0]
    assert (shaded[key_side] / albedo[key_side]).mean() > 0.85
    assert (shaded[dark] / albedo[dark]).mean().item() == pytest.approx(AMBIENT, abs=0.03)
