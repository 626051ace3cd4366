"""DreamStone's SVR model, mapper, stage-2 loss and training loop, on tiny configs."""

import pytest
import torch
import torch.nn.functional as F

from text3d_edu import dreamstone as ds
from text3d_edu import toyworld
from text3d_edu.cameras import orbit_cameras
from text3d_edu.world_render import render

TINY = ds.DreamStoneConfig(grid=8, code_dim=8, width=8, mapper_width=16)


@pytest.fixture(scope="module")
def clip():
    from text3d_edu.priors import load_clip

    return load_clip("pocket")


def test_models_give_the_documented_shapes_and_ranges():
    torch.manual_seed(0)
    svr, mapper = ds.SVRModel(TINY), ds.Mapper(TINY)
    code = svr.encoder(torch.rand(3, 3, 32, 32))
    assert code.shape == (3, 8)
    sdf, colour = svr.decoder(code)
    assert sdf.shape == (3, 8, 8, 8) and colour.shape == (3, 3, 8, 8, 8)
    assert sdf.abs().max() <= ds.TRUNCATION and 0 <= colour.min() and colour.max() <= 1
    assert mapper(F.normalize(torch.randn(5, 64), dim=-1)).shape == (5, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        ds.DreamStoneConfig(grid=12)


def test_shape_dataset_pairs_renders_features_and_grids(clip):
    data = ds.shape_dataset(2, views_per_object=2, resolution=8, clip=clip)
    assert data["images"].shape == (2, 2, 3, 32, 32) and data["images"].dtype == torch.uint8
    assert data["features"].shape == (2, 2, 64)
    torch.testing.assert_close(data["features"].norm(dim=-1), torch.ones(2, 2))
    assert data["sdf"].shape == (2, 8, 8, 8) and data["albedo"].shape == (2, 3, 8, 8, 8)
    assert data["sdf"].abs().max() <= ds.TRUNCATION and (data["sdf"] < 0).any()  # truncated, and solid inside
    assert data["kind"].tolist() == [0, 1]  # kinds cycle: table, chair


def test_mapper_loss_decreases_and_does_not_train_the_encoder():
    torch.manual_seed(0)
    mapper = ds.Mapper(TINY)
    features = F.normalize(torch.randn(16, 64), dim=-1)
    codes = torch.randn(16, 8, requires_grad=True)  # stands for E_S(I): L_M must not send it gradients
    optimizer = torch.optim.Adam(mapper.parameters(), lr=1e-2)
    first = ds.mapper_loss(mapper, features, codes)
    for _ in range(50):
        loss = ds.mapper_loss(mapper, features, codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first.item()
    assert codes.grad is None
    # L_M is the squared distance summed over the code, averaged over the batch
    torch.testing.assert_close(ds.mapper_loss(mapper, features, codes),
                               ((codes - mapper(features)) ** 2).sum(-1).mean())


def test_noise_mixing_is_normalised_and_weighted():
    f = F.normalize(torch.randn(64, 64), dim=-1)
    mixed = ds.mix_noise(f, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mixed.norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(mixed, ds.mix_noise(f, torch.Generator().manual_seed(0)))  # seeded
    assert ds.mix_noise(f, noise=0.0) is f
    # 0.25 f + 0.75 n/‖n‖ with n nearly orthogonal to f in 64-d: cos(mixed, f) ≈ 0.25 / √(0.25² + 0.75²) ≈ 0.32
    assert 0.2 < (mixed * f).sum(-1).mean().item() < 0.45


def test_consistency_loss_has_the_right_sign(clip):
    cameras = orbit_cameras(torch.tensor([20.0, 200.0]), 20.0, 3.2, resolution=32)
    mug = render(toyworld.parse_caption("a red mug"), cameras)["rgb"].permute(0, 3, 1, 2)
    car = render(toyworld.parse_caption("a blue car"), cameras)["rgb"].permute(0, 3, 1, 2)
    f_text = ds.text_features(clip, "a red mug")
    assert ds.consistency_loss(clip, f_text, mug) < ds.consistency_loss(clip, f_text, car)


def test_volsdf_density_is_half_of_alpha_on_the_surface():
    sdf = torch.zeros(8, 8, 8)
    shape = ds.DecodedShape(sdf, torch.full((3, 8, 8, 8), 0.5), beta=0.05)
    sigma, rgb = shape(torch.zeros(1, 3), torch.zeros(1, 3))
    torch.testing.assert_close(sigma, torch.tensor([0.5 / 0.05]))  # α Ψ_β(0) = ½ · 1/β
    torch.testing.assert_close(rgb, torch.full((1, 3), 0.5))


def test_shaded_renders_are_lit_like_the_pocket_world():
    from text3d_edu.world_render import AMBIENT, FILL, FILL_LIGHT, KEY, KEY_LIGHT

    axis = torch.linspace(-1, 1, 32)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    sdf = ((x**2 + y**2 + z**2).sqrt() - 0.5).clamp(-ds.TRUNCATION, ds.TRUNCATION)  # a ball of radius 0.5
    shape = ds.DecodedShape(sdf, torch.full((3, 32, 32, 32), 0.5), shaded=True)
    point = 0.5 * KEY_LIGHT[None]  # on the surface, its normal along the key light
    _, rgb = shape(point, torch.zeros_like(point))
    light = AMBIENT + KEY + FILL * max(float(KEY_LIGHT @ FILL_LIGHT), 0.0)
    torch.testing.assert_close(rgb, torch.full((1, 3), 0.5 * light), atol=0.02, rtol=0)


def test_stage2_gradients_reach_only_the_mapper(clip):
    torch.manual_seed(0)
    svr, mapper = ds.SVRModel(TINY).eval().requires_grad_(False), ds.Mapper(TINY)
    sdf, colour = ds.decode(svr, mapper, ds.text_features(clip, "a red mug"))
    renders = ds.render_shape(sdf[0], colour[0], orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 3.2,
                                                                   resolution=32), n_samples=16)
    ds.consistency_loss(clip, ds.text_features(clip, "a red mug"), renders).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapper.parameters())
    assert all(p.grad is None for p in svr.parameters())
    assert all(p.grad is None for p in clip.model.parameters())
    # refine_mapper: M' changes, M and D stay as they were
    before_d = [p.clone() for p in svr.parameters()]
    before_m = [p.clone() for p in mapper.parameters()]
    refined, losses = ds.refine_mapper(mapper, svr, clip, "a red mug", ds.Stage2Config(steps=2, views=2,
                                                                                       n_samples=8))
    assert len(losses) == 2
    assert all(torch.equal(a, b) for a, b in zip(before_d, svr.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_m, mapper.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_m, refined.parameters()))


def test_bad_prompts_are_named(clip):
    with pytest.raises(ValueError, match="empty prompt"):
        ds.text_features(clip, "  ")
    with pytest.raises(ValueError, match="'avocado'"):
        ds.text_features(clip, "a chair imitating avocado")


def test_nearest_kind_of_a_true_grid_is_its_kind():
    grids = ds.kind_grids(16)
    sdf = ds.shape_target(toyworld.make_object("duck", "red"), 16)[0]
    assert ds.nearest_kind(sdf, grids) == ("duck", 1.0)


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="text3d-edu train-dreamstone"):
        ds.load_dreamstone(tmp_path)


TRAIN_KWARGS = dict(svr_steps=3, mapper_steps=3, n_objects=4, views_per_object=2, checkpoint_every=2, config=TINY,
                    threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 trained for 3 steps on a tiny config: (run folder, weights folder, stats)."""
    folder = tmp_path_factory.mktemp("dreamstone")
    stats = ds.train_dreamstone(folder / "run", folder / "weights", **TRAIN_KWARGS)
    return folder / "run", folder / "weights", stats


def test_train_resume_round_trip(trained, tmp_path, capsys, clip):
    run, weights, stats = trained
    assert stats["steps"] == {"svr": 3, "mapper": 3} and set(stats["loss"]) == {"svr", "mapper"}
    assert 0 <= stats["stage1_text_to_shape"]["kind_acc"] <= 1
    svr, mapper = ds.load_dreamstone(weights)
    assert svr.config == TINY and not any(p.requires_grad for p in mapper.parameters())
    sdf, colour = ds.text_to_shape(svr, mapper, clip, "a red mug")
    assert sdf.shape == (8, 8, 8) and colour.shape == (3, 8, 8, 8)
    # a finished phase is loaded, not retrained: the same weights
    ds.train_dreamstone(run, tmp_path / "weights2", resume=True, **TRAIN_KWARGS)
    assert "resumed: trained weights found" in capsys.readouterr().out
    again, _ = ds.load_dreamstone(tmp_path / "weights2")
    assert all(torch.equal(a, b) for a, b in zip(svr.state_dict().values(), again.state_dict().values()))


def test_generate_writes_a_grid_result(trained, tmp_path, clip):
    import json

    from text3d_edu.results import load_result

    config = ds.Stage2Config(steps=2, views=2, n_samples=8)
    field_, metrics = ds.generate_dreamstone("a red mug", tmp_path / "out", config, clip=clip,
                                             weights_dir=trained[1])
    assert metrics["method"] == "dreamstone" and metrics["steps"] == 2
    assert {"stage1_shape", "stage2_shape", "kind_acc", "silhouette_iou"} <= set(metrics)
    for name in ("views.png", "stage1_views.png", "turntable.gif", "metrics.json", "checkpoint.pt"):
        assert (tmp_path / "out" / name).exists(), name
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["prompt"] == "a red mug"
    load_result(tmp_path / "out")  # text3d-edu render reads it back
    with pytest.raises(ValueError, match="already holds a result"):
        ds.generate_dreamstone("a red mug", tmp_path / "out", config, clip=clip, weights_dir=trained[1])


def test_shape_to_field_keeps_the_volsdf_density_outside_the_surface():
    axis = torch.linspace(-1, 1, 8)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    sdf = ((x**2 + y**2 + z**2).sqrt() - 0.5).clamp(-ds.TRUNCATION, ds.TRUNCATION)  # a ball of radius 0.5
    # 15 = 2·7 + 1: the finer grid's vertices include the coarse one's, so d is interpolated alike; near the points,
    # every vertex is outside the surface, where log σ is linear in d
    field_ = ds.shape_to_field(sdf, torch.full((3, 8, 8, 8), 0.25), beta=0.05, resolution=15)
    points = torch.tensor([[0.0, 0.0, 0.6], [0.0, 0.7, 0.0]])
    sigma, rgb = field_(points, torch.zeros_like(points))
    expected = ds.DecodedShape(sdf, torch.full((3, 8, 8, 8), 0.25), beta=0.05)(points, torch.zeros_like(points))
    torch.testing.assert_close(sigma, expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rgb, expected[1], rtol=1e-3, atol=1e-3)


def test_generate_cli_rejects_options_of_other_methods(tmp_path, capsys):
    from text3d_edu.cli import main

    assert main(["generate", "a red mug", "--method", "dreamstone", "--guidance", "3", "--out", str(tmp_path)]) == 2
    assert "--guidance: not options of --method dreamstone" in capsys.readouterr().err


def test_an_interrupted_phase_resumes_exactly(tmp_path, clip):
    import shutil

    data = ds.shape_dataset(4, views_per_object=2, resolution=8, clip=clip)
    whole, _ = ds.train_svr(TINY, data, 4, 0, tmp_path / "a", False, batch_size=4, checkpoint_every=2)
    # a run stopped after step 2: only the checkpoint of step 2 in its folder
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    resumed, _ = ds.train_svr(TINY, data, 4, 0, tmp_path / "b", True, batch_size=4, checkpoint_every=2)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_cli_trains_and_writes_the_weights_and_stats(tmp_path, capsys):
    import json

    from text3d_edu.cli import main

    weights = tmp_path / "weights"
    assert main(["train-dreamstone", "--out", str(tmp_path / "run"), "--weights-dir", str(weights),
                 "--svr-steps", "2", "--mapper-steps", "2", "--objects", "2", "--noise", "0"]) == 0
    assert "stage-1 text → shape" in capsys.readouterr().out
    stats = json.loads((weights / ds.STATS_FILE).read_text())
    assert stats["command"].startswith("text3d-edu train-dreamstone --svr-steps 2") and stats["noise"] == 0
    assert all((weights / name).exists() for name in ds.WEIGHTS.values())


def test_the_shipped_weights_turn_text_into_the_named_kind(clip):
    # stage 1 alone, all 13 kinds × red / blue: the model card's 0.85 kind, 0.77 colour (nearest kind by IoU)
    svr, mapper = ds.load_dreamstone()
    stage1 = ds.evaluate(svr, mapper, clip)
    assert stage1["kind_acc"] >= 0.8 and stage1["colour_acc"] >= 0.7
    # stage 2 on prompts stage 1 gets wrong (kind or colour) makes the mapper's shape at least as right
    wrong = [row["prompt"] for row in stage1["shapes"]
             if row["kind"] != toyworld.parse_caption(row["prompt"]).kind][:2]
    refined = ds.evaluate(svr, mapper, clip, wrong, refine=ds.Stage2Config(steps=40))
    before = ds.evaluate(svr, mapper, clip, wrong)
    assert refined["kind_acc"] > before["kind_acc"]


def test_stage2_stops_on_a_nan_loss_naming_the_fix(clip, monkeypatch):
    svr, mapper = ds.SVRModel(TINY), ds.Mapper(TINY)
    monkeypatch.setattr(ds, "consistency_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="lower Stage2Config.lr"):
        ds.refine_mapper(mapper, svr, clip, "a red mug", ds.Stage2Config(steps=3, views=1, n_samples=4))
