"""The Janus measure: the pocket CLIP tells fronts from backs on Pocket World ground truth, and a two-faced object
(its back views replaced by front views) scores worse."""

from __future__ import annotations

import pytest
import torch

from text3d_edu import janus, toyworld
from text3d_edu.cameras import orbit_cameras
from text3d_edu.fields import GridField
from text3d_edu.generate import render_views
from text3d_edu.world_render import render


def test_cameras_and_captions():
    cams = janus.janus_cameras(n_azimuths=8, elevations=(0.0, 20.0), resolution=16)
    assert len(cams) == 16 and cams.resolution == 16
    assert cams.azimuth[:8].tolist() == [0.0, 45.0, 90.0, 135.0, -180.0, -135.0, -90.0, -45.0]
    assert cams.elevation.tolist() == [0.0] * 8 + [20.0] * 8
    assert janus.view_captions("a red mug")[2] == "a red mug, back view"


def test_report_counts_back_views_judged_front():
    azimuth = [0.0, 90.0, 180.0, -150.0]
    report = janus.janus_report(["front", "side", "front", "back"], azimuth)
    assert report.truth == ["front", "side", "back", "back"]
    assert report.janus_score == 0.5 and report.back_views_judged_front == (1, 2)
    assert report.view_accuracy == 0.75
    with pytest.raises(ValueError, match="no back views"):
        janus.janus_report(["front"], [0.0])


CAMERAS = {"n_azimuths": 24, "elevations": (15.0,)}  # one ring of 24 views keeps the test fast


@pytest.mark.parametrize("kind", ["mug", "duck", "car"])
def test_ground_truth_front_is_front_and_back_is_back(clip, kind):
    report = janus.measure_object(toyworld.make_object(kind, "red"), clip, janus.janus_cameras(**CAMERAS))
    assert report.janus_score == 0.0  # no back view of the real object looks like its front
    judged_at = dict(zip(report.azimuth, report.judged))
    assert judged_at[0.0] == "front" and judged_at[-180.0] == "back"
    # measured with the shipped CLIP: duck 0.96, car 0.92, mug 0.625 (the four views from −90° to −45°, its
    # handle's side, read as "back"); a view-blind judge scores about a third
    assert report.view_accuracy >= 0.6


def test_two_faced_object_scores_worse(clip):
    obj = toyworld.make_object("mug", "red")
    cams = janus.janus_cameras(**CAMERAS)
    # the camera opposite each back camera sees the mug's front
    mirrored = orbit_cameras(cams.azimuth + 180.0, cams.elevation, 3.2, resolution=cams.resolution)
    images = render(obj, cams)["rgb"].permute(0, 3, 1, 2)
    fronts = render(obj, mirrored)["rgb"].permute(0, 3, 1, 2)
    back = (cams.azimuth.abs() > 135.0)[:, None, None, None]
    two_faced = torch.where(back, fronts, images)  # a Janus mug: its front printed on its back too
    honest = janus.measure_images(images, cams.azimuth, obj.short_caption, clip)
    janus_mug = janus.measure_images(two_faced, cams.azimuth, obj.short_caption, clip)
    assert honest.janus_score == 0.0
    assert janus_mug.janus_score >= 0.8
    assert janus_mug.view_accuracy < honest.view_accuracy


def test_two_faced_margin_separates_two_faced_from_featureless_and_real(clip):
    house = toyworld.make_object("house", "blue")
    cams = janus.janus_cameras(elevations=(15.0,))
    real = render(house, cams)["rgb"].permute(0, 3, 1, 2)
    opposite = orbit_cameras(cams.azimuth + 180.0, cams.elevation, 3.2, resolution=32)
    fronts = render(house, opposite)["rgb"].permute(0, 3, 1, 2)
    is_back = (cams.azimuth.abs() > 135.0)[:, None, None, None]
    two_faced = torch.where(is_back, fronts, real)
    featureless = render_views(GridField(32, init="blob"), cams)  # a grey ball: the same from every side
    margins = {name: janus.two_faced_margin(images, cams, house, clip)
               for name, images in [("real", real), ("two-faced", two_faced), ("featureless", featureless)]}
    assert margins["real"] < -0.9 and margins["two-faced"] > 0.9
    assert abs(margins["featureless"]) < 0.5
