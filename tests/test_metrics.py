"""Metrics on hand-made cases with known answers, and the released numbers of every reference set."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import metrics
from model.metrics import BLACK, BLUE, GREEN, WHITE
from reference_vectors import SETS, config, load, set_dir


def img(h, w, colour=BLACK):
    return torch.tensor(colour, dtype=torch.uint8).expand(h, w, 3).clone()


def test_round_image_wraps_like_the_release():
    pixels = torch.tensor([[[40, 169, 204], [250, 250, 250], [10, 10, 10], [128, 128, 128]]],
                          dtype=torch.uint8)
    # uint8 arithmetic of the release: (40,169,204) is "nearer" black; true distance says white
    assert metrics.round_image(pixels)[0, 0].tolist() == list(BLACK)
    assert metrics.round_image(pixels, wraparound=False)[0, 0].tolist() == list(WHITE)
    assert metrics.round_image(pixels)[0, 1].tolist() == list(WHITE)
    assert metrics.round_image(pixels)[0, 2].tolist() == list(BLACK)
    # colour options, ties to the first option
    options = [BLUE, GREEN, WHITE, BLACK]
    near_green = torch.tensor([[[0, 250, 0], [0, 200, 10]]], dtype=torch.uint8)
    assert metrics.round_image(near_green, options)[0].tolist() == [list(GREEN), list(BLACK)]
    assert metrics.round_image(near_green, options, wraparound=False)[0, 1].tolist() == list(GREEN)
    tie = torch.tensor([[[0, 0, 0]]], dtype=torch.uint8)     # equally far from two options
    assert metrics.round_image(tie, [BLUE, GREEN])[0, 0].tolist() == list(BLUE)
    assert metrics.round_image(tie, [GREEN, BLUE])[0, 0].tolist() == list(GREEN)


@pytest.mark.parametrize("name", SETS)
def test_round_image_reproduces_reference(testdata, name):
    io = load(set_dir(testdata, name), "mae_io")
    assert torch.equal(metrics.round_image(io["orig_hwc"][0]), io["orig_rounded"])
    assert torch.equal(metrics.round_image(io["im_paste"][0]), io["pred_rounded"])


@pytest.mark.parametrize("name", SETS)
def test_segmentation_scores_reproduce_reference(testdata, name):
    d = set_dir(testdata, name)
    io, cfg = load(d, "mae_io"), config(d)
    c = cfg["canvas"]["metric_crop"]
    got = metrics.segmentation_scores(io["pred_rounded"][c:, c:], io["orig_rounded"][c:, c:])
    for k, v in cfg["results"]["seg_metric_sample0"].items():
        assert got[k].item() == pytest.approx(v, abs=1e-6)


def test_segmentation_scores_hand_made():
    target = img(10, 10)
    target[:, :5] = 255                     # 50 white pixels
    ours = img(10, 10)
    ours[:, 3:8] = 255                      # 50 white, 20 overlap
    s = metrics.segmentation_scores(ours, target)
    assert s["iou"].item() == pytest.approx(20 / 80)
    assert s["color_blind_iou"].item() == pytest.approx(20 / 80)
    assert s["accuracy"].item() == pytest.approx(40 / 100)   # 60 pixels differ
    ours[0, 9] = torch.tensor(BLUE, dtype=torch.uint8)   # not white, not black
    s = metrics.segmentation_scores(ours, target)
    assert s["iou"].item() == pytest.approx(20 / 80)
    assert s["color_blind_iou"].item() == pytest.approx(20 / 81)
    # the blue pixel was black in the target: one more wrong pixel (pixel-wise, as released)
    assert s["accuracy"].item() == pytest.approx(39 / 100)
    assert math.isnan(metrics.segmentation_scores(img(4, 4), img(4, 4))["iou"].item())


def test_synthetic_scores_hand_made():
    target = img(8, 8, WHITE)
    target[:4, :4] = torch.tensor(BLUE, dtype=torch.uint8)      # 16 blue pixels
    ours = img(8, 8, WHITE)
    ours[:4, :2] = torch.tensor(BLUE, dtype=torch.uint8)        # 8 right
    ours[:4, 2:4] = torch.tensor(GREEN, dtype=torch.uint8)      # 8 wrong colour, right place
    s = metrics.synthetic_scores(ours, target)
    assert s["iou"].item() == pytest.approx(8 / 16)
    assert s["color_blind_iou"].item() == pytest.approx(1.0)
    assert s["accuracy"].item() == pytest.approx(56 / 64)
    # the colour can be given; the green pixels then count as wrong in the target as well
    assert metrics.synthetic_scores(ours, target, colour=BLUE)["iou"].item() == pytest.approx(0.5)
    assert metrics.synthetic_scores(target, ours)["iou"].item() == pytest.approx(8 / 16)
    with pytest.raises(ValueError, match="only the background"):
        metrics.synthetic_scores(ours, img(8, 8, WHITE))


def test_largest_component_box():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True                   # 4 pixels
    mask[5, 5:9] = True                     # 6 pixels, L-shaped with the next line
    mask[6:8, 8] = True
    box = metrics.largest_component_box(mask)
    expected = np.zeros_like(mask)
    expected[5:8, 5:9] = True
    assert np.array_equal(box, expected)
    diag = np.eye(4, dtype=bool)            # 8-connected: one component
    assert metrics.largest_component_box(diag).all()
    assert not metrics.largest_component_box(np.zeros((3, 3), dtype=bool)).any()
    rounded = img(10, 10)
    rounded[torch.from_numpy(mask)] = 255
    assert torch.equal(metrics.to_box(rounded[None])[0, ..., 0] == 255, torch.from_numpy(expected))


def test_classwise_miou_and_fb_iou():
    target, ours = img(2, 2), img(2, 2)
    target[0] = 255                         # 2 fg pixels
    ours[0, 0] = 255                        # 1 predicted, right
    a = metrics.fg_bg_areas(ours[None], target[None])        # bg: I=2, U=3; fg: I=1, U=2
    assert a[0].tolist() == [[2, 3], [1, 2]]
    b = metrics.fg_bg_areas(target[None], target[None])      # perfect: bg 2/2, fg 2/2
    areas = torch.cat([a, b, a])
    miou, per_class = metrics.classwise_miou(areas, [1, 1, 2])
    assert per_class == {1: pytest.approx(3 / 4), 2: pytest.approx(1 / 2)}
    assert miou == pytest.approx(5 / 8)
    # FB-IoU: bg (2+2+2)/(3+2+3), fg (1+2+1)/(2+2+2), averaged
    assert metrics.fb_iou(areas) == pytest.approx((6 / 8 + 4 / 6) / 2)


def test_normalised_mse():
    a, b = img(4, 4, WHITE), img(4, 4, BLACK)
    std = np.array([0.229, 0.224, 0.225])
    assert metrics.normalised_mse(a, b).item() == pytest.approx(np.mean(1 / std ** 2))
    assert metrics.normalised_mse(a, a).item() == 0


def test_lpips_needs_local_weights(tmp_path):
    missing = tmp_path / "alexnet-owt-7be5be79.pth"
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth") as e:
        metrics.Lpips(missing)
    assert str(missing) in str(e.value) and "download.pytorch.org" in str(e.value)


def test_lpips_with_a_local_backbone(tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)   # random, but local
    lp = metrics.Lpips(weights)
    a = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    same = lp(a, a)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert (lp(a, 255 - a) > same).all()
    torch.save({"features.0.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="not torchvision AlexNet"):
        metrics.Lpips(weights)
