"""SDFusion's VQ-VAE, multi-modal guidance, completion, training loop and CLI, on tiny configs; and the shipped
weights on a small held-out set."""

import json

import pytest
import torch
import torch.nn.functional as F

from text3d_edu import toyworld
from text3d_edu.dreamstone import grid_points
from text3d_edu.sdfusion import data, pipeline, sampler, train
from text3d_edu.sdfusion.unet import LatentUNet, UNetConfig
from text3d_edu.sdfusion.vqvae import TRUNCATION, VQVAE, Codebook, VQVAEConfig, vqvae_loss
from text3d_edu.world_render import sdf_grid

TINY_VQ = VQVAEConfig(width=8, codebook_size=16)
TINY_UNET = UNetConfig(width=8, heads=2)


@pytest.fixture(scope="module")
def clip():
    from text3d_edu.priors import load_clip

    return load_clip("pocket")


def ball(radius: float = 0.5, resolution: int = 32) -> torch.Tensor:
    """A truncated SDF grid (R, R, R) of a ball."""
    points = grid_points(resolution)
    return (points.norm(dim=-1) - radius).clamp(-TRUNCATION, TRUNCATION).reshape(resolution, resolution, resolution)


def test_the_straight_through_estimator_passes_the_decoders_gradient_to_the_encoder():
    torch.manual_seed(0)
    model = VQVAE(TINY_VQ)
    sdf = ball()[None]
    z = model.encode(sdf)
    z_q, _, k = model.codebook(z)
    # the forward value is the codebook entry ...
    torch.testing.assert_close(z_q, model.codebook.embedding(k).movedim(-1, 1))
    # ... and the reconstruction loss alone (no VQ term) still trains the encoder
    (model.decoder(z_q)[:, 0] - sdf).abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_the_commitment_loss_has_the_value_and_the_gradients_of_vq_vae_eq_3():
    codebook = Codebook(VQVAEConfig(latent_channels=2, codebook_size=2, beta=0.25))
    with torch.no_grad():
        codebook.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z = torch.tensor([0.2, 0.9]).reshape(1, 2, 1, 1, 1).requires_grad_(True)  # nearest entry: (1, 1)
    z_q, loss, k = codebook(z)
    entry = codebook.embedding.weight[k.item()]
    squared = ((z.detach().flatten() - entry.detach()) ** 2).mean()
    torch.testing.assert_close(loss, (1 + 0.25) * squared)  # ‖sg[z] − e‖² + β ‖z − sg[e]‖²
    loss.backward()
    # the commitment term alone reaches z (β · 2(z − e)/n); the codebook term alone reaches e
    torch.testing.assert_close(z.grad.flatten(), 0.25 * 2 * (z.detach().flatten() - entry.detach()) / 2)
    entry_grad = codebook.embedding.weight.grad[k.item()]
    torch.testing.assert_close(entry_grad, 2 * (entry.detach() - z.detach().flatten()) / 2)


def test_the_vqvae_gives_the_documented_shapes_and_its_loss_trains():
    torch.manual_seed(0)
    model = VQVAE(TINY_VQ)
    sdf = torch.stack([ball(0.5), ball(0.3)])
    assert model.encode(sdf).shape == (2, 3, 8, 8, 8)
    assert model(sdf)[0].shape == sdf.shape
    assert model.decode(model.encode(sdf)).abs().max() <= TRUNCATION  # decoding clamps to [−δ, δ]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = vqvae_loss(model, sdf).item()
    for _ in range(30):
        loss = vqvae_loss(model, sdf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return LatentUNet(TINY_UNET).eval()


def test_multimodal_guidance_reduces_to_single_condition_cfg_and_to_the_unconditional(unet):
    torch.manual_seed(1)
    z_t, t = torch.randn(2, 3, 8, 8, 8), torch.tensor([500, 20])
    text, image = F.normalize(torch.randn(2, 64), dim=-1), F.normalize(torch.randn(2, 64), dim=-1)
    partial = torch.randn(2, 4, 8, 8, 8)
    conditions = {"text": text, "image": image, "partial": partial}
    with torch.no_grad():
        eps_empty, eps_text = unet(z_t, t), unet(z_t, t, text=text)
        # all weights zero: ε(z_t, ∅)
        zero = sampler.guided_epsilon(unet, z_t, t, conditions, {"text": 0.0, "image": 0.0, "partial": 0.0})
        torch.testing.assert_close(zero, eps_empty, rtol=1e-4, atol=1e-5)
        # the other weights zero: single-condition CFG, ε(∅) + s (ε(c) − ε(∅))
        single = sampler.guided_epsilon(unet, z_t, t, conditions, {"text": 3.0, "image": 0.0, "partial": 0.0})
        torch.testing.assert_close(single, eps_empty + 3.0 * (eps_text - eps_empty), rtol=1e-4, atol=1e-5)
        # two conditions: each alone in its own term (not both at once)
        both = sampler.guided_epsilon(unet, z_t, t, {"text": text, "image": image}, {"text": 2.0, "image": 1.5})
        eps_image = unet(z_t, t, image=image)
        expected = eps_empty + 2.0 * (eps_text - eps_empty) + 1.5 * (eps_image - eps_empty)
        torch.testing.assert_close(both, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="must name the same"):
        sampler.guided_epsilon(unet, z_t, t, {"text": text}, {"image": 1.0})


def test_completion_keeps_the_known_region(unet):
    torch.manual_seed(0)
    vqvae = VQVAE(TINY_VQ).eval()
    sdf = torch.stack([ball(0.5), ball(0.35)])
    out = pipeline.complete(vqvae, unet, sdf, "bottom", pipeline.SampleConfig(steps=3), seed=0)
    keep = data.half_mask("bottom")
    assert out.shape == sdf.shape
    assert torch.equal(out[:, keep], sdf[:, keep])
    # DDIM with a known region returns the known latent there
    condition, known, inner = pipeline.partial_condition(vqvae, sdf, "bottom")
    assert condition.shape == (2, 4, 8, 8, 8) and inner.sum() == 8 * 8 * 3  # 4 kept layers less the one at the cut
    z = sampler.ddim_sample(unet, (2, 3, 8, 8, 8), {"partial": condition}, {"partial": 1.0}, steps=3,
                            generator=torch.Generator().manual_seed(0), known=known, known_mask=inner)
    torch.testing.assert_close(z * inner, known * inner)


def test_the_judge_names_the_kind_of_true_shapes_in_any_form():
    grids = data.form_grids()
    for kind, form in (("duck", "tall"), ("chair", ""), ("cube stack", "small")):
        sdf = sdf_grid(toyworld.make_object(kind, "green", form, seed=3), 32)
        assert data.judge_kind(sdf, grids)[0] == kind


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="text3d-edu train-sdfusion"):
        train.load_sdfusion(tmp_path)


def test_an_interrupted_phase_resumes_exactly(tmp_path):
    import shutil

    sdf = torch.stack([ball(0.5), ball(0.3), ball(0.4)])
    whole, _ = train.train_vqvae(TINY_VQ, sdf, 4, 0, tmp_path / "a", False, batch_size=2, checkpoint_every=2)
    # a run stopped after step 2: only the checkpoint of step 2 in its folder
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    resumed, _ = train.train_vqvae(TINY_VQ, sdf, 4, 0, tmp_path / "b", True, batch_size=2, checkpoint_every=2)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_nan_loss_stops_training_with_a_message(tmp_path, monkeypatch):
    from text3d_edu.priors.train import TrainingDiverged

    monkeypatch.setattr(train, "vqvae_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train.train_vqvae(TINY_VQ, ball()[None], 3, 0, tmp_path, False, batch_size=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both phases trained for 2 steps on tiny configs, through the CLI's function: (weights folder, stats)."""
    folder = tmp_path_factory.mktemp("sdfusion")
    stats = train.train_sdfusion(folder / "run", folder / "weights", vqvae_steps=2, unet_steps=2, n_objects=4,
                                 heldout_objects=2, checkpoint_every=2, vqvae_config=TINY_VQ, unet_config=TINY_UNET,
                                 completions=1, prompts=["a red mug"])
    return folder / "weights", stats


def test_training_writes_weights_and_the_measured_record(trained):
    weights, stats = trained
    assert stats["steps"] == {"vqvae": 2, "unet": 2} and set(stats["measured"]) >= {
        "vqvae_iou", "text_kind_acc", "completion_iou", "sample_seconds"}
    assert json.loads((weights / pipeline.STATS_FILE).read_text())["train_minutes_cpu"] == stats["train_minutes_cpu"]
    vqvae, unet = train.load_sdfusion(weights)
    assert vqvae.config == TINY_VQ and vqvae.latent_std.mean().item() == pytest.approx(
        stats["sizes"]["latent_std_mean"], abs=1e-3)
    assert not any(p.requires_grad for p in unet.parameters())


def test_generate_cli_writes_a_result_that_render_reads(trained, tmp_path, capsys, monkeypatch):
    from text3d_edu.cli import main
    from text3d_edu.priors.pocket_clip import WEIGHTS_DIR

    monkeypatch.setattr(train, "load_sdfusion", lambda weights_dir=None: _load(trained[0]))
    out = tmp_path / "out"
    assert main(["generate", "a red mug", "--method", "sdfusion", "--steps", "3", "--partial", "a blue chair",
                 "--keep", "bottom", "--out", str(out)]) == 0
    assert "sdfusion, 3 DDIM steps" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sdfusion" and metrics["conditions"]["partial"] == {"caption": "a blue chair",
                                                                                    "keep": "bottom"}
    assert {"shape", "kind_acc", "silhouette_iou"} <= set(metrics) and "red" in metrics["colour_rule"]
    for name in ("views.png", "turntable.gif", "checkpoint.pt"):
        assert (out / name).exists(), name
    assert main(["render", str(out), "--out", str(tmp_path / "again.png"), "--azimuths", "0", "90"]) == 0
    assert (tmp_path / "again.png").exists() and WEIGHTS_DIR.exists()


def _load(weights):
    return train.load_model(weights / pipeline.WEIGHTS["vqvae"], "vqvae"), \
        train.load_model(weights / pipeline.WEIGHTS["unet"], "unet")


@pytest.mark.parametrize("argv, message", [
    (["a red gizmo"], "never saw the words ['gizmo']"),
    (["a red mug", "--keep", "top"], "give --partial CAPTION too"),
    (["a red mug", "--partial", "a red gizmo"], "cannot read 'a red gizmo'"),
    (["a red mug", "--particles", "2"], "--particles: not options of --method sdfusion"),
    (["a red mug", "--image", "no_such.png"], "not a readable image"),
])
def test_bad_input_is_named(argv, message, tmp_path, capsys):
    from text3d_edu.cli import main

    assert main(["generate", *argv, "--method", "sdfusion", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_other_methods_reject_sdfusions_options(tmp_path, capsys):
    from text3d_edu.cli import main

    assert main(["generate", "a red mug", "--method", "point-e", "--partial", "a red mug", "--out",
                 str(tmp_path)]) == 2
    assert "--partial: options of --method sdfusion only" in capsys.readouterr().err

