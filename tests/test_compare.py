"""text3d-edu compare (lecture 10): every method run as a student runs it, every result judged by the same code."""

import dataclasses
import json

import pytest
import torch
import trimesh

from text3d_edu import compare as comparison
from text3d_edu.cli import main


def test_every_method_of_generate_has_a_row_with_a_place_in_the_taxonomy_and_a_cited_cost():
    from text3d_edu.cli import build_parser

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    methods = next(a for a in generate._actions if a.dest == "method").choices
    assert sorted(comparison.METHODS) == sorted(methods)
    for method in comparison.METHODS.values():
        assert method.taxonomy in ("3DPT", "3DUT", "NO3D", "Hybrid3D")
        assert method.paper and method.paper_cost


def test_a_method_without_shipped_weights_is_named_with_its_training_command_not_run(tmp_path, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("a method without weights was run")

    monkeypatch.setattr(comparison, "run_method", no_run)
    unshipped = dataclasses.replace(comparison.METHODS["point-e"], weights=("point_e_nowhere.safetensors",),
                                    train_command="text3d-edu train-pointe")
    monkeypatch.setitem(comparison.METHODS, "point-e", unshipped)
    with pytest.raises(ValueError, match="point-e: no weights .point_e_nowhere.safetensors.: train them with "
                                         "text3d-edu train-pointe"):
        comparison.compare(["a red mug"], ["point-e"], out_dir=tmp_path / "a", progress=False)
    assert "point_e_nowhere" in comparison.markdown({"methods": [], "unavailable": {"point-e": "no weights "
                                                                                     "(point_e_nowhere)"}})


def test_janus_score_is_taken_at_the_object_s_best_turn():
    azimuth = [float(a) for a in range(-180, 180, 15)]  # 24 views, φ = 0 the front
    label = {"front": lambda a: abs(a) <= 45, "back": lambda a: abs(a) > 135}

    def verdicts(front_at: float) -> list[str]:  # an honest object whose front faces φ = front_at
        turned = [(a - front_at + 180) % 360 - 180 for a in azimuth]
        return ["front" if label["front"](a) else "back" if label["back"](a) else "side" for a in turned]

    assert comparison.janus_score(verdicts(0.0), azimuth) == 0.0
    assert comparison.janus_score(verdicts(180.0), azimuth) == 0.0  # turned round: not two-faced
    assert comparison.janus_score(["front"] * 24, azimuth) == 1.0  # a front from every side
    two_faced = ["front" if abs(a) <= 45 or abs(a) > 135 else "side" for a in azimuth]
    assert comparison.janus_score(two_faced, azimuth) > 0.5


def test_diversity_is_none_for_one_result_and_grows_with_the_difference():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0])
    assert comparison.diversity([a]) is None
    assert comparison.diversity([a, a]) == pytest.approx(0.0, abs=1e-6)
    assert comparison.diversity([a, b]) < comparison.diversity([a, c]) == pytest.approx(1.0)


def test_watertight_reads_the_result_s_mesh(tmp_path):
    assert comparison.watertight(tmp_path) is None
    trimesh.creation.icosphere().export(tmp_path / "mesh.glb")
    assert comparison.watertight(tmp_path) is True
    open_box = trimesh.creation.box()
    open_box.update_faces(list(range(len(open_box.faces) - 2)))  # drop one side's two triangles
    open_box.export(tmp_path / "mesh.glb")
    assert comparison.watertight(tmp_path) is False


def test_bad_input_is_named_before_anything_runs(tmp_path, capsys):
    assert main(["compare", "--methods", "sdss", "--out", str(tmp_path / "a")]) == 2
    assert "unknown method 'sdss'" in capsys.readouterr().err
    assert main(["compare", "--prompts", "a red spaceship", "--out", str(tmp_path / "b")]) == 2
    assert "spaceship" in capsys.readouterr().err
    assert main(["compare", "--seeds", "0", "--out", str(tmp_path / "c")]) == 2
    assert "seeds must be at least 1" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("a student's notes")
    assert main(["compare", "--out", str(tmp_path / "d")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "d" / "mine.txt").read_text() == "a student's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing written for the refused commands


@pytest.fixture(scope="module")
def point_e_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, comparison.compare(["a red mug"], ["point-e"], seeds=2, quick=True, out_dir=out, progress=False)


def test_a_comparison_judges_each_run_and_writes_its_three_tables(point_e_table):
    out, table = point_e_table
    assert [r["seed"] for r in table["results"]] == [0, 1]
    for run in table["results"]:
        metrics = json.loads((out / "point-e" / "a_red_mug" / f"seed_{run['seed']}" / "metrics.json").read_text())
        # the pocket CLIP's verdict from the re-rendered result is the one generate wrote
        assert run["clip_kind_acc"] == pytest.approx(metrics["kind_acc"])
        assert run["clip_colour_acc"] == pytest.approx(metrics["colour_acc"])
        assert run["silhouette_iou"] == pytest.approx(metrics["silhouette_iou"], abs=1e-3)
        assert 0 <= run["cnn_kind_acc"] <= 1 and 0 <= run["janus_score"] <= 1
        assert run["seconds"] > 0 and run["peak_mb"] > 100  # a process that loaded torch and the priors
        assert run["watertight"] in (True, False)
    (row,) = table["methods"]
    assert row["taxonomy"] == "Hybrid3D" and row["results"] == 2
    assert row["diversity"] is not None and row["diversity"] > 0  # two seeds make two different clouds
    assert row["seconds"] == pytest.approx(sum(r["seconds"] for r in table["results"]) / 2, abs=0.06)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["methods"] == table["methods"]
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("method,paper,taxonomy")
    assert "| point-e | Hybrid3D |" in (out / "compare.md").read_text()


def test_resume_reuses_finished_runs_and_redoes_nothing(point_e_table, monkeypatch):
    out, table = point_e_table

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(comparison, "run_method", no_run)
    again = comparison.compare(["a red mug"], ["point-e"], seeds=2, quick=True, out_dir=out, resume=True,
                               progress=False)
    assert again["methods"] == table["methods"]
