"""Point-E's denoiser, diffusion and training loop, on tiny configs."""

import math

import pytest
import torch

from text3d_edu.point_e.diffusion import (
    NUM_TRAIN_TIMESTEPS,
    from_model,
    make_scheduler,
    sample,
    to_model,
    training_loss,
)
from text3d_edu.point_e.model import DenoiserConfig, PointDenoiser
from text3d_edu.point_e.train import load_denoiser, random_subsets, save_denoiser, train_denoiser

TINY = DenoiserConfig(points=16, width=32, layers=2, heads=2, cond_dim=8)
TINY_UPSAMPLER = DenoiserConfig(points=24, coarse_points=16, width=32, layers=2, heads=2, cond_dim=8)


def trained_a_little(config: DenoiserConfig, seed: int = 0) -> PointDenoiser:
    """A denoiser whose output layer is no longer zero (an untrained one predicts ε̂ = 0 whatever its input)."""
    torch.manual_seed(seed)
    model = PointDenoiser(config)
    torch.nn.init.normal_(model.output_proj.weight, std=0.1)
    return model.eval()


def test_untrained_denoiser_predicts_zero_noise_of_the_points_shape():
    model = PointDenoiser(TINY)
    x_t, t, cond = torch.randn(3, 16, 6), torch.tensor([0, 500, 1023]), torch.randn(3, 8)
    eps = model(x_t, t, cond)
    assert eps.shape == (3, 16, 6) and torch.count_nonzero(eps) == 0


def test_condition_tokens_are_prepended_and_dropped_from_the_output():
    model = trained_a_little(TINY_UPSAMPLER)
    x_t, coarse = torch.randn(2, 24, 6), torch.randn(2, 16, 6)
    t, cond = torch.tensor([10, 900]), torch.randn(2, 8)
    eps = model(x_t, t, cond, coarse)
    assert eps.shape == (2, 24, 6)  # one output per noisy point: the 2 + 16 condition tokens are gone
    # the timestep, the image and the coarse cloud each change the prediction
    assert not torch.allclose(eps, model(x_t, t.flip(0), cond, coarse))
    assert not torch.allclose(eps, model(x_t, t, None, coarse))
    assert not torch.allclose(eps, model(x_t, t, cond, coarse + 0.5))


def test_points_are_a_set_permuting_them_permutes_the_prediction():
    model = trained_a_little(TINY)
    x_t, t, cond = torch.randn(1, 16, 6), torch.tensor([300]), torch.randn(1, 8)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x_t[:, order], t, cond), model(x_t, t, cond)[:, order], atol=1e-5, rtol=1e-4)


def test_bad_shapes_and_missing_coarse_cloud_are_named():
    with pytest.raises(ValueError, match=r"\(B, 16, 6\)"):
        PointDenoiser(TINY)(torch.randn(1, 15, 6), torch.tensor([1]), None)
    with pytest.raises(ValueError, match="coarse cloud"):
        PointDenoiser(TINY_UPSAMPLER)(torch.randn(1, 24, 6), torch.tensor([1]), None)
    with pytest.raises(ValueError, match="multiple of heads"):
        DenoiserConfig(width=30, heads=4)


def test_cosine_schedule_is_point_e_s():
    """ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008 (Nichol & Dhariwal 2021, eq. 17)."""
    alpha_bar = make_scheduler().alphas_cumprod  # (T,)
    f = lambda t: math.cos((t / NUM_TRAIN_TIMESTEPS + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 512, 900):
        assert abs(alpha_bar[t].item() - f(t + 1) / f(0)) < 2e-3


def test_model_units_round_trip_and_rgb_in_minus_one_one():
    xyz, rgb = torch.rand(5, 3) * 2 - 1, torch.rand(5, 3)
    cloud = to_model(xyz, rgb)
    assert cloud[:, 3:].min() >= -1 and cloud[:, 3:].max() <= 1
    back_xyz, back_rgb = from_model(cloud)
    torch.testing.assert_close(back_xyz, xyz)
    torch.testing.assert_close(back_rgb, rgb)


def test_sampling_is_deterministic_for_a_seed_and_guidance_zero_is_the_conditional_model():
    model, cond = trained_a_little(TINY), torch.randn(2, 8)
    first = sample(model, cond, torch.Generator().manual_seed(1), guidance=3.0, steps=8)
    again = sample(model, cond, torch.Generator().manual_seed(1), guidance=3.0, steps=8)
    other = sample(model, cond, torch.Generator().manual_seed(2), guidance=3.0, steps=8)
    assert first.shape == (2, 16, 6) and torch.equal(first, again) and not torch.allclose(first, other)
    # s = 1: ε̂(∅) + 1·(ε̂(c) − ε̂(∅)) = ε̂(c), the same as the unguided conditional model (s = 0 here)
    torch.testing.assert_close(sample(model, cond, torch.Generator().manual_seed(1), guidance=1.0, steps=8),
                               sample(model, cond, torch.Generator().manual_seed(1), guidance=0.0, steps=8),
                               atol=1e-5, rtol=1e-4)


def test_training_loss_drops_conditions_and_is_the_noise_mse():
    model = trained_a_little(TINY)
    x_0, cond = torch.randn(4, 16, 6), torch.randn(4, 8)
    loss = training_loss(model, x_0, cond, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and loss.item() > 0.5  # ε ~ N(0, I): an almost untrained model's MSE is about 1
    # with every condition dropped, the loss does not depend on cond at all
    dropped = [training_loss(model, x_0, c, torch.Generator().manual_seed(0), condition_dropout=1.0)
               for c in (cond, torch.randn(4, 8))]
    assert dropped[0].item() == dropped[1].item()


def test_random_subsets_are_distinct_points_of_the_right_cloud():
    clouds = torch.arange(2 * 10 * 6, dtype=torch.float32).reshape(2, 10, 6)
    picked = random_subsets(clouds, torch.tensor([1, 1, 0]), 4, torch.Generator().manual_seed(0))
    assert picked.shape == (3, 4, 6)
    for row, source in zip(picked, (1, 1, 0)):
        rows = {tuple(p.tolist()) for p in row}
        assert len(rows) == 4 and rows <= {tuple(p.tolist()) for p in clouds[source]}


def toy_data(objects: int = 6, views: int = 2, points: int = 48, cond_dim: int = 8) -> dict:
    """Clouds that depend on their features: two clusters of points, the features say which."""
    generator = torch.Generator().manual_seed(0)
    side = torch.arange(objects) % 2 * 2 - 1.0  # (N,) ±1
    clouds = torch.randn(objects, points, 6, generator=generator) * 0.1 + side[:, None, None] * 0.5
    features = side[:, None, None].expand(objects, views, cond_dim).clone()
    return {"clouds": clouds, "features": features}


@pytest.mark.parametrize("config", [TINY, TINY_UPSAMPLER], ids=["base", "upsampler"])
def test_training_lowers_the_loss_and_resume_is_exact(config, tmp_path):
    torch.set_num_threads(1)
    data, name = toy_data(), "upsampler" if config.coarse_points else "base"
    model, _ = train_denoiser(name, config, data, 6, 0, tmp_path / "straight", resume=False, batch_size=8, lr=3e-3)
    train_denoiser(name, config, data, 6, 0, tmp_path / "resumed", resume=False, batch_size=8, lr=3e-3,
                   checkpoint_every=3)
    resumed, _ = train_denoiser(name, config, data, 6, 0, tmp_path / "resumed", resume=True, batch_size=8, lr=3e-3,
                                checkpoint_every=3)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    longer, loss = train_denoiser(name, config, data, 120, 0, tmp_path / "longer", resume=False, batch_size=8,
                                  lr=3e-3)
    generator = torch.Generator().manual_seed(5)

    def held_loss(m):
        torch.manual_seed(0)
        x = random_subsets(data["clouds"], torch.arange(6), config.points + config.coarse_points, generator)
        coarse = x[:, :config.coarse_points] if config.coarse_points else None
        return training_loss(m, x[:, config.coarse_points:], data["features"][:, 0], torch.Generator().manual_seed(3),
                             coarse=coarse, condition_dropout=0.0).item()

    assert held_loss(longer) < 0.8 * held_loss(PointDenoiser(config))


def test_saved_weights_load_with_their_config_and_missing_weights_say_how_to_train(tmp_path):
    model = trained_a_little(TINY_UPSAMPLER)
    save_denoiser(model, tmp_path / "up.safetensors")
    loaded = load_denoiser(tmp_path / "up.safetensors")
    assert loaded.config == TINY_UPSAMPLER
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a.half().float(), b)
    with pytest.raises(FileNotFoundError, match="text3d-edu train-pointe"):
        load_denoiser(tmp_path / "missing.safetensors")


def test_cloud_dataset_pairs_surface_clouds_with_renders_of_the_same_object(clip):
    from text3d_edu.point_e.data import cloud_dataset
    from text3d_edu.priors import data as pocket_data

    data = cloud_dataset(3, views_per_object=2, points=64, seed=4, clip=clip)
    assert data["clouds"].shape == (3, 64, 6) and data["features"].shape == (3, 2, 64)
    assert data["images"].shape == (3, 2, 3, 32, 32)
    offset = pocket_data.dataset_offset(4)
    for i in range(3):
        obj = pocket_data.dataset_object(i, offset)
        xyz, rgb = from_model(data["clouds"][i])
        assert data["caption"][i] == obj.short_caption
        assert obj.sdf(xyz).abs().max() < 0.02  # on the surface
        # the features are the CLIP embeddings of this object's own renders
        torch.testing.assert_close(data["features"][i], clip.encode_image(data["images"][i].float() / 255))


@pytest.mark.parametrize("prompt", ["a brown house", "a blue table"])
def test_a_true_surface_cloud_becomes_the_true_solid(prompt):
    """cloud_to_field on 512 points of the true surface (the size of the pipeline's cloud) gives back the object."""
    from text3d_edu import toyworld
    from text3d_edu.fidelity import fidelity_cameras, truth_renders
    from text3d_edu.generate import field_fidelity
    from text3d_edu.point_e.pipeline import cloud_to_field
    from text3d_edu.world_render import surface_points

    obj = toyworld.parse_caption(prompt)
    xyz, _ = surface_points(obj, 512, seed=1)
    figures = field_fidelity(cloud_to_field(xyz, obj.albedo(xyz)), prompt, truth_renders(prompt, fidelity_cameras()))
    assert figures["silhouette_iou"] > 0.75  # measured 0.93 (house), 0.80 (table: its legs are thin)
    assert figures["colour_error"] < 0.1


def test_cloud_fidelity_tells_the_true_cloud_from_another_kind_and_a_wrong_colour():
    from text3d_edu import toyworld
    from text3d_edu.point_e.pipeline import cloud_fidelity
    from text3d_edu.world_render import surface_points

    mug = toyworld.parse_caption("a red mug")
    xyz, _ = surface_points(mug, 512, seed=1)
    own = cloud_fidelity(xyz, mug.albedo(xyz), "a red mug")
    assert own["chamfer_ratio"] < 0.5 and own["point_colour_ok"] and own["point_colours"] == ["red"]  # measured 0.33
    stool = toyworld.parse_caption("a blue stool")
    xyz, _ = surface_points(stool, 512, seed=1)
    other = cloud_fidelity(xyz, stool.albedo(xyz), "a red mug")
    assert other["chamfer_ratio"] > 1 and other["nearest_other_kind"] == "stool"
    assert not other["point_colour_ok"] and other["point_colours"] == ["blue"]
    stack = toyworld.parse_caption("a small red cube on top of a large blue cube")
    xyz, _ = surface_points(stack, 512, seed=1)
    assert cloud_fidelity(xyz, stack.albedo(xyz), stack.caption)["point_colours"] == ["red", "blue"]
    swapped = cloud_fidelity(xyz, stack.albedo(xyz).flip(-1), stack.caption)  # red ↔ blue channels
    assert not swapped["point_colour_ok"]


def test_pipeline_stages_keep_the_base_points_and_are_deterministic(prior, clip):
    from text3d_edu.point_e.pipeline import PointEConfig, text_to_cloud

    base = trained_a_little(DenoiserConfig(points=16, width=32, layers=2, heads=2, cond_dim=64))
    upsampler = trained_a_little(DenoiserConfig(points=24, coarse_points=16, width=32, layers=2, heads=2,
                                                cond_dim=64))
    config = PointEConfig(image_steps=5, steps=4)
    result = text_to_cloud("a red mug", base, upsampler, prior, clip, seed=3, config=config)
    again = text_to_cloud("a red mug", base, upsampler, prior, clip, seed=3, config=config)
    assert result["image"].shape == (3, 32, 32) and result["cloud"].shape == (40, 6)
    assert torch.equal(result["cloud"][:16], result["coarse"])  # the upsampler adds points, the base ones stay
    assert torch.equal(result["cloud"], again["cloud"])
    assert set(result["seconds"]) == {"image", "base", "upsampler"}


def test_generate_point_e_writes_a_result_render_can_read_and_names_missing_weights(tmp_path, prior, clip, capsys):
    from text3d_edu.cli import main
    from text3d_edu.generate import judge_cameras
    from text3d_edu.point_e.pipeline import PointEConfig, generate_point_e
    from text3d_edu.point_e.train import WEIGHTS
    from text3d_edu.results import load_result

    weights = tmp_path / "weights"
    weights.mkdir()
    save_denoiser(trained_a_little(DenoiserConfig(points=16, width=32, layers=2, heads=2, cond_dim=64)),
                  weights / WEIGHTS["base"])
    save_denoiser(trained_a_little(DenoiserConfig(points=24, coarse_points=16, width=32, layers=2, heads=2,
                                                  cond_dim=64)), weights / WEIGHTS["upsampler"])
    out = tmp_path / "mug"
    config = PointEConfig(image_steps=5, steps=4)
    _, metrics = generate_point_e("a red mug", out, config, prior=prior, clip=clip, weights_dir=weights)
    for name in ("views.png", "turntable.gif", "cloud.ply", "synthetic_view.png", "metrics.json", "checkpoint.pt"):
        assert (out / name).exists(), name
    assert metrics["method"] == "point-e" and metrics["points"] == 40
    assert set(metrics["stage_seconds"]) == {"image", "base", "upsampler", "solid"}
    assert "silhouette_iou" in metrics and metrics["chamfer"] > 0
    assert load_result(out).render(judge_cameras(32)).shape == (8, 3, 32, 32)  # text3d-edu render reads it
    with pytest.raises(ValueError, match="already holds a result"):
        generate_point_e("a red mug", out, config, prior=prior, clip=clip, weights_dir=weights)
    with pytest.raises(FileNotFoundError, match="text3d-edu train-pointe"):
        generate_point_e("a red mug", tmp_path / "other", config, weights_dir=tmp_path / "nothing")
    assert main(["generate", "a red mug", "--method", "point-e", "--steps", "10"]) == 2
    assert "--steps: not options of --method point-e" in capsys.readouterr().err
    assert main(["generate", "a red mug", "--method", "point-e", "--coarse-steps", "10"]) == 2  # was ignored
    assert "--coarse-steps: not options of --method point-e" in capsys.readouterr().err
