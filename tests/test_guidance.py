"""2D guidance (SDS with and without the U-Net Jacobian, the CLIP loss, view prompts) and the generation loop."""

import json

import pytest
import torch

from text3d_edu import cameras
from text3d_edu.generate import GenerateConfig, generate, judge
from text3d_edu.guidance.clip_loss import clip_loss, random_backgrounds, semantic_consistency_loss
from text3d_edu.guidance.sds import SDSConfig, sds_loss
from text3d_edu.guidance.view_prompts import view_prompt, view_prompts


def test_sds_gradient_is_the_weighted_noise_residual_without_the_unet_jacobian(prior):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional(1)
    loss, info = sds_loss(prior, images, cond, uncond, SDSConfig(guidance=10.0), torch.Generator().manual_seed(0))
    loss.backward()
    # x = 2·image − 1, and ∂loss/∂x = w(t)(ε̂ − ε) / B, so ∂loss/∂image = 2 w(t)(ε̂ − ε) / B
    assert torch.allclose(images.grad, 2 * info["grad"] / 2, atol=1e-6)
    assert all(p.grad is None for p in prior.unet.parameters()), "SDS must not backprop into the U-Net"
    alpha_bar = prior.alphas_cumprod[info["t"]]
    assert torch.allclose(info["w"], 1 - alpha_bar)


def test_sds_with_the_jacobian_backprops_through_the_unet(prior):
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    cond, uncond = prior.encode_prompt(["a red mug"]), prior.encode_unconditional(1)
    generator = torch.Generator().manual_seed(0)
    loss, info = sds_loss(prior, images, cond, uncond, SDSConfig(unet_jacobian=True), generator)
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    # same t and ε: the gradients differ, because the U-Net Jacobian ∂ε̂/∂x_t now multiplies the residual
    plain = images.detach().clone().requires_grad_(True)
    sds_loss(prior, plain, cond, uncond, SDSConfig(), torch.Generator().manual_seed(0))[0].backward()
    assert not torch.allclose(plain.grad, images.grad)


def test_sds_config_rejects_bad_options():
    with pytest.raises(ValueError, match="weighting"):
        SDSConfig(weighting="sqrt")
    with pytest.raises(ValueError, match="t_range"):
        SDSConfig(t_range=(0.9, 0.1))


def test_sds_in_2d_turns_grey_into_the_prompt(prior, clip):
    """Score distillation on the pixels of one image: the pocket CLIP must then see a red mug."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.zeros(1, 3, 32, 32, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    cond, uncond = prior.encode_prompt(["a red mug, front view"]), prior.encode_unconditional(1)
    before = judge(torch.sigmoid(logits).detach(), "a red mug", clip)
    for _ in range(150):
        loss, _ = sds_loss(prior, torch.sigmoid(logits), cond, uncond, SDSConfig(guidance=30.0), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = judge(torch.sigmoid(logits).detach(), "a red mug", clip)
    assert before["clip_rprecision"] == 0 and after["colour_acc"] == 1.0


def test_view_prompts_follow_dreamfusion_labels():
    assert view_prompt("a red mug", 0, 10) == "a red mug, front view"
    assert view_prompt("a red mug", 180, 10) == "a red mug, back view"
    assert view_prompt("a red mug", -90, 10) == "a red mug, side view"
    assert view_prompt("a red mug", 0, 80) == "a red mug, overhead view"
    cams = cameras.orbit_cameras([0.0, 90.0, 180.0], 0.0)
    assert view_prompts("a cone", cams) == ["a cone, front view", "a cone, side view", "a cone, back view"]


def test_clip_loss_prefers_the_right_caption_and_reaches_the_render(clip):
    from text3d_edu import toyworld, world_render

    render = world_render.render(toyworld.make_object("mug", "red"), cameras.orbit_cameras([20.0], resolution=32))
    rgb = (render["rgb"] * render["alpha"][..., None]).permute(0, 3, 1, 2).requires_grad_(True)
    opacity = render["alpha"]
    background = torch.tensor(toyworld.BACKGROUND)
    right, _ = clip_loss(clip, rgb, opacity, clip.encode_text(["a red mug"]), background=background)
    wrong, _ = clip_loss(clip, rgb, opacity, clip.encode_text(["a blue table"]), background=background)
    assert right < wrong
    right.backward()
    assert rgb.grad.abs().sum() > 0
    assert random_backgrounds(4, 16, torch.Generator().manual_seed(0)).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="opacity"):
        clip_loss(clip, rgb, opacity[0], clip.encode_text(["a red mug"]))
    same = semantic_consistency_loss(clip, rgb.detach(), rgb.detach())
    other = semantic_consistency_loss(clip, rgb.detach(), torch.rand_like(rgb))
    assert same < other


def test_generate_beats_its_starting_blob(tmp_path):
    _, metrics = generate("a red mug", tmp_path / "mug", GenerateConfig(steps=250), progress=False)
    assert metrics["initial_colour_acc"] <= 0.25
    assert metrics["colour_acc"] >= 0.75 and metrics["kind_acc"] >= 0.5
    # the object itself, not a blob the judge accepts: against the true mug from the same cameras
    assert metrics["silhouette_iou"] >= metrics["initial_silhouette_iou"] + 0.25
    assert metrics["frame_share"] < 1.5 * metrics["truth_frame_share"] < metrics["initial_frame_share"]
    saved = json.loads((tmp_path / "mug" / "metrics.json").read_text())
    assert saved["kind_acc"] == metrics["kind_acc"]
    for name in ("views.png", "turntable.gif", "mesh.glb", "checkpoint.pt"):
        assert (tmp_path / "mug" / name).exists()


def test_generate_resumes_exactly_and_never_overwrites(tmp_path):
    # a shorter first run stands in for an interrupted one; schedules set in fractions of the steps (opaque_from)
    # would move with its total, so the opaqueness term applies from the start here
    config = GenerateConfig(steps=6, checkpoint_every=3, opaque_from=0.0)
    straight, _ = generate("a blue table", tmp_path / "a", config, progress=False)
    (tmp_path / "b").mkdir()
    generate("a blue table", tmp_path / "b", GenerateConfig(steps=3, checkpoint_every=3, opaque_from=0.0),
             progress=False)
    (tmp_path / "b" / "metrics.json").unlink()  # as if the 6-step run had been interrupted after step 3
    first = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["seconds"]
    resumed, metrics = generate("a blue table", tmp_path / "b", config, resume=True, progress=False)
    assert torch.equal(straight.log_sigma, resumed.log_sigma)
    # the time per step counts both runs' seconds over both runs' steps
    assert metrics["seconds"] > round(first, 1)
    assert metrics["seconds_per_step"] == pytest.approx(metrics["seconds"] / 6, abs=0.01)
    with pytest.raises(ValueError, match="already holds a result"):
        generate("a blue table", tmp_path / "a", config, progress=False)


def test_generate_rejects_bad_input_and_stops_on_nan(tmp_path):
    with pytest.raises(ValueError, match="empty prompt"):
        generate("  ", None, GenerateConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="positive"):
        GenerateConfig(steps=-1)
    with pytest.raises(ValueError, match="unknown method"):
        GenerateConfig(method="vsd-typo")
    with pytest.raises(FloatingPointError, match="guidance weight"):
        generate("a red mug", None, GenerateConfig(steps=3, sds=SDSConfig(guidance=float("nan"))), progress=False)
