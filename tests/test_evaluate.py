"""`python -m model.evaluate` end to end on the CPU: set_a weights, real VOC images, synthetic tasks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model import evaluate, evaluation, metrics, tasks, voc
from reference_vectors import SETS, config, full_state, set_dir, vqgan_params

SIZES = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
         "decoder_num_heads", "mlp_ratio")


def released_checkpoint(d, tmp):
    """A released-style checkpoint {"model": mae ∪ vae.*} of the set `d`, its VQGAN yaml and sizes."""
    cfg = config(d)
    torch.save({"model": full_state(d), "epoch": 0}, tmp / "checkpoint.pth")
    (tmp / "model.yaml").write_text(yaml.safe_dump({"model": {"params": vqgan_params(cfg)}}))
    (tmp / "arch.json").write_text(json.dumps({k: cfg["mae"][k] for k in SIZES}))
    return {"ckpt": tmp / "checkpoint.pth", "yaml": tmp / "model.yaml", "arch": tmp / "arch.json",
            "size": cfg["mae"]["img_size"]}


@pytest.fixture(scope="module")
def checkpoint(testdata, tmp_path_factory):
    return released_checkpoint(set_dir(testdata, "set_a"), tmp_path_factory.mktemp("ckpt"))


def args_for(checkpoint, out, *extra):
    return ["--checkpoint", str(checkpoint["ckpt"]), "--vqgan-config", str(checkpoint["yaml"]),
            "--arch", str(checkpoint["arch"]), "--size", str(checkpoint["size"]),
            "--out", str(out), "--batch-size", "4", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def voc_root(testdata, tmp_path_factory):
    """VOCdevkit/VOC2012 over the real fixture images: every masked image as segmentation val,
    and detection lists with annotations written from the aeroplane masks' boxes."""
    tmp = tmp_path_factory.mktemp("voc")
    root = tmp / "VOCdevkit" / "VOC2012"
    root.mkdir(parents=True)
    for folder in ("JPEGImages", "SegmentationClassAug"):
        (root / folder).symlink_to(testdata / "voc" / folder)
    masked = sorted(p.stem for p in (testdata / "voc" / "SegmentationClassAug").glob("*.png"))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(masked) + "\n")
    (root / "Annotations").mkdir()
    for image_id in ("2007_000033", "2008_004630"):
        m = np.array(Image.open(testdata / "voc" / "SegmentationClassAug" / f"{image_id}.png"))
        ys, xs = np.nonzero(m == 1)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{m.shape[1]}</width><height>{m.shape[0]}</height></size>"
            f"<object><name>aeroplane</name><difficult>0</difficult><bndbox><xmin>{xs.min() + 1}"
            f"</xmin><ymin>{ys.min() + 1}</ymin><xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}"
            f"</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main").mkdir()
    (root / "ImageSets" / "Main" / "val.txt").write_text("2007_000033\n")
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_004630\n")
    return tmp


def read(out):
    return json.loads((out / "results.json").read_text())


def test_segmentation_end_to_end(checkpoint, voc_root, tmp_path):
    out = tmp_path / "seg"
    code = evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data",
                                  str(voc_root), "--splits", "derived", "--fold", "0", "--episodes", "6",
                                  "--seeds", "0", "1"))
    assert code == 0
    res = read(out)
    assert res["episodes"] == 6 and [r["seed"] for r in res["per_seed"]] == [0, 1]
    m = res["per_seed"][0]["metrics"]
    for key in ("iou", "color_blind_iou", "accuracy", "class_miou", "fb_iou"):
        assert 0 <= m[key] <= 1, key
    assert set(m["per_class_iou"]) == {"aeroplane"}     # bicycle has one image: no support
    assert res["summary"]["iou"]["std"] >= 0
    assert "| mean ± std |" in (out / "results.md").read_text()
    rows = (out / "episodes.csv").read_text().splitlines()
    assert rows[0].startswith("seed,index,query,supports,class_id,iou") and len(rows) == 1 + 12
    assert rows[1].split(",")[2] in ("2007_000033", "2008_004630")
    png = Image.open(out / "segmentation-fold-0.png")
    assert png.width == 3 * checkpoint["size"] + 8 and png.height > checkpoint["size"]


def test_segmentation_better_prompts(checkpoint, voc_root, tmp_path):
    out = tmp_path / "nearest"
    code = evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data",
                                  str(voc_root), "--splits", "derived", "--fold", "2", "--episodes", "4",
                                  "--support", "nearest", "--support-pool", "val",
                                  "--layouts", "default", "flip",
                                  "--workers", "1"))
    assert code == 0
    res = read(out)
    assert res["support"] == "nearest" and res["layouts"] == ["default", "flip"]
    assert 0 <= res["per_seed"][0]["metrics"]["iou"] <= 1


def test_detection_end_to_end(checkpoint, voc_root, tmp_path):
    out = tmp_path / "det"
    code = evaluate.main(args_for(checkpoint, out, "--task", "detection", "--data", str(voc_root),
                                  "--protocol", "clean",
                                  "--area-filter", "none", "--episodes", "2", "--true-rounding"))
    assert code == 0
    res = read(out)
    m = res["per_seed"][0]["metrics"]
    assert 0 <= m["iou"] <= 1 and "fb_iou" in m and res["true_rounding"] is True


def test_detection_filter_that_keeps_nothing_says_what_to_try(checkpoint, voc_root, tmp_path, capsys):
    # the fixture's aeroplanes are large: none passes the released "<20% of the image" filter
    code = evaluate.main(args_for(checkpoint, tmp_path, "--task", "detection", "--data", str(voc_root),
                                  "--protocol", "clean"))
    assert code == 2 and "try --area-filter paper or none" in capsys.readouterr().err


def test_colorization_end_to_end(checkpoint, testdata, tmp_path):
    val = tmp_path / "imagenet" / "val"
    jpegs = sorted((testdata / "voc" / "JPEGImages").glob("*.jpg"))
    for i, jpg in enumerate(jpegs):
        (val / f"n0{i % 2}").mkdir(parents=True, exist_ok=True)
        (val / f"n0{i % 2}" / jpg.name).symlink_to(jpg)
    out = tmp_path / "color"
    code = evaluate.main(args_for(checkpoint, out, "--task", "colorization", "--data",
                                  str(tmp_path / "imagenet"), "--episodes", "5"))
    assert code == 0
    res = read(out)
    assert res["seeds"] == [5] and res["per_seed"][0]["metrics"]["mse"] > 0
    # n-shot rows prompt: two example rows above the query, the last output hidden
    out = tmp_path / "color-2shot"
    assert evaluate.main(args_for(checkpoint, out, "--task", "colorization", "--data",
                                  str(tmp_path / "imagenet"), "--episodes", "3", "--shots", "2")) == 0
    res = read(out)
    assert res["shots"] == 2 and res["per_seed"][0]["metrics"]["mse"] > 0


def test_all_synthetic_tasks_in_one_run(checkpoint, tmp_path):
    code = evaluate.main(args_for(checkpoint, tmp_path, "--task", "synthetic", "--synthetic", "all",
                                  "--episodes", "2", "--picture-rows", "1"))
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["variants"]) == 6 and summary["metric"] == "iou"
    assert (tmp_path / "synthetic-shape_color" / "results.json").is_file()
    assert "| mean |" in (tmp_path / "summary.md").read_text()
    # one seed: no "± 0.0000" that would read as "no spread"
    assert "±" not in (tmp_path / "summary.md").read_text()
    assert "±" not in (tmp_path / "synthetic-color" / "results.md").read_text()


@pytest.mark.parametrize("task", ["color", "size_shape"])
def test_synthetic_end_to_end(checkpoint, tmp_path, task):
    out = tmp_path / task
    code = evaluate.main(args_for(checkpoint, out, "--task", "synthetic", "--synthetic", task,
                                  "--episodes", "6"))
    assert code == 0
    m = read(out)["per_seed"][0]["metrics"]
    assert {"iou", "color_blind_iou", "accuracy"} <= set(m)
    assert "circle@" in (out / "episodes.csv").read_text().splitlines()[1]
    assert 0 <= m["accuracy"] <= 1


def test_checkpoint_of_another_architecture(checkpoint, tmp_path, capsys):
    code = evaluate.main(args_for(checkpoint, tmp_path, "--task", "synthetic")[:4] +
                         ["--arch", "mae_vit_base_patch16", "--size", "64", "--task", "synthetic",
                          "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not fit --arch mae_vit_base_patch16" in err and "encoder width 32, depth 2" in err
    # the right encoder with another VQGAN config: the error names the config instead
    other = tmp_path / "other.yaml"
    cfg = yaml.safe_load(checkpoint["yaml"].read_text())
    cfg["model"]["params"]["embed_dim"] = 8          # codebook width: vae.* keys only
    other.write_text(yaml.safe_dump(cfg))
    code = evaluate.main(args_for(checkpoint, tmp_path, "--task", "synthetic")[:2] +
                         ["--vqgan-config", str(other)] + args_for(checkpoint, tmp_path, "--task", "synthetic")[4:])
    assert code == 2 and "do not fit --vqgan-config" in capsys.readouterr().err


def test_random_supports_follow_the_release_draws():
    pairs = [("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 2)]
    np.random.seed(0)                      # the released DatasetPASCAL.sample_episode
    by_class = {1: ["a", "b", "c"], 2: ["d", "e"]}
    expected = []
    for idx in range(7):
        query, cls = pairs[idx % len(pairs)]
        while True:
            support = np.random.choice(by_class[cls], 1, replace=False)[0]
            if support != query:
                break
        expected.append((query, support))
    got = [(e.query, e.supports[0]) for e in tasks.random_supports(pairs, 7, seed=0)]
    assert got == expected


def test_synthetic_episodes_geometry():
    eps = tasks.synthetic_episodes("size_color", 3, seed=0)
    (query_in, query_out) = eps[0].query
    assert query_in.radius == 30 and query_out.radius == 20 and query_out.center == query_in.center
    assert query_out.color == (0, 0, 255) and len(eps[0].supports) == 2
    drawn = query_in.draw()
    x, y = query_in.center
    assert tuple(drawn[y, x]) == (0, 255, 0) and 10 <= x < 214 and 10 <= y < 214
    inside = (drawn == (0, 255, 0)).all(-1).sum()
    assert abs(inside - np.pi * 30 ** 2) < 0.05 * np.pi * 30 ** 2 or x < 30 or y < 30 or x > 193 or y > 193
    square = tasks.Figure((100, 100), 20, (0, 0, 255), "rectangle").draw()
    assert (square == (0, 0, 255)).all(-1).sum() == 41 * 41     # OpenCV: corners inclusive
    assert tasks.synthetic_episodes("color", 3, seed=0) == tasks.synthetic_episodes("color", 3, seed=0)


def test_colorization_draws(tmp_path):
    eps = tasks.colorization_episodes(50, n_episodes=10, seed=5)
    rng = np.random.RandomState(5)
    assert [e.query for e in eps] == rng.choice(np.arange(0, 49), size=10, replace=False).tolist()
    assert all(0 <= e.supports[0] < 9 for e in eps)
    with pytest.raises(ValueError, match="more than 10 images"):
        tasks.colorization_episodes(10, n_episodes=10)


def test_bad_voc_root_is_a_clear_error(checkpoint, tmp_path, capsys):
    (tmp_path / "JPEGImages").mkdir()
    code = evaluate.main(args_for(checkpoint, tmp_path / "out", "--task", "segmentation",
                                  "--data", str(tmp_path)))
    assert code == 2 and "missing the folder SegmentationClassAug" in capsys.readouterr().err
    assert isinstance(voc.VocError("x"), ValueError)


def test_uint8_canvases_are_lossless(testdata, tmp_path):
    """Workers ship uint8 canvases; /255 must give back the float canvas bit for bit."""
    from model.prompting import make_canvas

    root = voc.voc_root(testdata / "voc")
    ep = tasks.Episode("2007_000033", ("2008_004630",), 1)
    ds = tasks.SegmentationTask(root, [ep], 224)
    canvas = ds[0]["canvas"]
    assert canvas.dtype == torch.uint8 and canvas.shape == (1, 3, 224, 224)
    q_img, q_mask = ds.load("2007_000033", ep)
    s_img, s_mask = ds.load("2008_004630", ep)
    assert torch.equal(canvas[0].float() / 255, make_canvas(s_img, s_mask, q_img, q_mask, 224))
    assert 0 < (q_mask > 0).float().mean() < 1 and ((q_mask > 0) & (q_mask < 1)).any()  # bicubic edges


def test_n_shot_rows_prompt(testdata):
    files = sorted((testdata / "voc" / "JPEGImages").glob("*.jpg"))
    ds = tasks.ColorizationTask(files, [tasks.Episode(0, (1, 2, 3, 4))], size=224, shots=2)
    canvas = ds[0]["canvas"]
    assert ds.side == 74 and canvas.shape == (2, 3, 224, 224)     # 4 supports / 2 shots = 2 prompts
    assert (canvas[:, :, :, :37] == 255).all()                      # white margin
    grey_query = canvas[0, :, 150:224, 37:111]
    assert torch.equal(grey_query[0], grey_query[1]) and torch.equal(grey_query[1], grey_query[2])
    assert not torch.equal(canvas[0, :, :74], canvas[1, :, :74])   # other examples


def test_images_are_prepared_as_the_released_transforms(testdata):
    """Our PIL steps equal the released torchvision pipelines, value for value."""
    import torchvision.transforms as T

    root = voc.voc_root(testdata / "voc")
    ep = tasks.Episode("2011_000006", ("2011_000003",), 15)
    img, mask = tasks.SegmentationTask(root, [ep], 224).load("2011_000006", ep)
    released = T.Compose([T.Resize((111, 111), 3), T.ToTensor()])     # evaluate_segmentation.py
    class_mask = np.array(Image.open(root / "SegmentationClassAug" / "2011_000006.png"))
    class_mask[class_mask != 15] = 0                                   # extract_ignore_idx
    class_mask[class_mask == 15] = 255
    assert torch.equal(img, released(Image.open(root / "JPEGImages" / "2011_000006.jpg")))
    assert torch.equal(mask, released(Image.fromarray(class_mask)))

    files = [root / "JPEGImages" / "2011_000006.jpg"]
    grey, colour = tasks.ColorizationTask(files, [tasks.Episode(0, (0,))], 224).load(0, None)
    photo = Image.open(files[0]).convert("RGB")                        # ImageFolder's loader
    assert torch.equal(grey, T.Compose([T.CenterCrop((111, 111)), T.Grayscale(3), T.ToTensor()])(photo))
    assert torch.equal(colour, T.Compose([T.CenterCrop((111, 111)), T.ToTensor()])(photo))

    fig = tasks.Figure((60, 90), 25, (0, 255, 0))
    ours = tasks.SyntheticTask([], 224).figure(fig, rows=3)
    assert torch.equal(ours, T.Compose([T.Resize((74, 74)), T.ToTensor()])(Image.fromarray(fig.draw())))


def test_set_b_sizes_end_to_end(voc_root, tmp_path):
    """The set_b configuration of VECTORS.md (96 px, 6x6 grid, cell 47, num_res_blocks 2), random
    weights: released-style checkpoint, no --size (read from the checkpoint), real VOC images."""
    import argparse

    from model.mae_vqgan import MaeVqgan
    from model.vqgan import VQModel

    ddconfig = dict(double_z=False, z_channels=48, resolution=96, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1, 1, 1, 1, 1], num_res_blocks=2, attn_resolutions=[6], dropout=0.0)
    sizes = dict(patch_size=16, embed_dim=48, depth=3, num_heads=4, decoder_embed_dim=32,
                 decoder_depth=2, decoder_num_heads=2, mlp_ratio=4.0)
    torch.manual_seed(0)
    model = MaeVqgan(VQModel(ddconfig, 32, 8), img_size=96, **sizes)
    torch.save({"model": model.state_dict(), "epoch": 0, "args": argparse.Namespace(model="x")},
               tmp_path / "checkpoint.pth")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(
        {"model": {"target": "taming.models.vqgan.VQModel",
                   "params": {"ddconfig": ddconfig, "n_embed": 32, "embed_dim": 8}}}))
    out = tmp_path / "seg"
    code = evaluate.main(["--task", "segmentation", "--checkpoint", str(tmp_path / "checkpoint.pth"),
                          "--vqgan-config", str(tmp_path / "model.yaml"), "--arch", json.dumps(sizes),
                          "--data", str(voc_root), "--splits", "derived", "--episodes", "3", "--batch-size", "2",
                          "--device", "cpu", "--out", str(out)])
    assert code == 0 and read(out)["size"] == 96
    assert 0 <= read(out)["per_seed"][0]["metrics"]["iou"] <= 1
    assert Image.open(out / "segmentation-fold-0.png").width == 3 * 96 + 8


@pytest.mark.parametrize("name", SETS)
def test_every_reference_set_end_to_end(testdata, voc_root, tmp_path, name):
    """Each set's weights and sizes through the CLI, the image size read from the checkpoint."""
    ckpt = released_checkpoint(set_dir(testdata, name), tmp_path)
    args = args_for(ckpt, tmp_path / "seg", "--task", "segmentation", "--data", str(voc_root),
                    "--splits", "derived", "--episodes", "2")
    size_at = args.index("--size")
    assert evaluate.main(args[:size_at] + args[size_at + 2:]) == 0
    assert read(tmp_path / "seg")["size"] == ckpt["size"]
    assert Image.open(tmp_path / "seg" / "segmentation-fold-0.png").width == 3 * ckpt["size"] + 8


def test_detection_nearest_supports_pick_the_most_similar():
    def obj(image_id):
        return voc.VocObject(image_id, 1, (0, 0, 10, 10), 100, 100)

    query, supports = obj("q"), [obj("far"), obj("near"), obj("mid")]
    features = {"q": torch.tensor([1.0, 0.0]), "far": torch.tensor([0.0, 1.0]),
                "near": torch.tensor([0.99, 0.14]), "mid": torch.tensor([0.7, 0.71])}
    eps = tasks.detection_episodes([query], supports, 2, seed=0, shots=2, features=features)
    assert [s.image_id for s in eps[0].supports] == ["near", "mid"] and eps[0] == eps[1]
    # without features: the released random draw, unchanged
    assert len(tasks.detection_episodes([query], supports, 1, seed=0)[0].supports) == 1


def test_detection_with_nearest_supports_end_to_end(checkpoint, voc_root, tmp_path):
    out = tmp_path / "det-nearest"
    code = evaluate.main(args_for(checkpoint, out, "--task", "detection", "--data", str(voc_root),
                                  "--protocol", "clean",
                                  "--area-filter", "none", "--episodes", "2", "--support", "nearest"))
    assert code == 0 and read(out)["support"] == "nearest"
    assert (out / "episodes.csv").read_text().splitlines()[1].split(",")[3] == "2008_004630"


@pytest.mark.parametrize("extra", [["--support", "nearest"], ["--ensemble", "2"],
                                   ["--layouts", "flip"], ["--shots", "2"]])
def test_synthetic_refuses_prompt_options_it_would_ignore(checkpoint, tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as e:
        evaluate.main(args_for(checkpoint, tmp_path, "--task", "synthetic", *extra))
    assert e.value.code == 2 and "synthetic" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("broken", ["missing image", "mask of another size"])
def test_bad_voc_images_fail_before_any_episode_with_a_plain_message(checkpoint, testdata, tmp_path,
                                                                     capsys, broken):
    """Checked up front: from a DataLoader worker the error would arrive wrapped in a traceback."""
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    ids = ["2007_000033", "2008_004630", "2010_002030"]
    for image_id in ids:
        (root / "JPEGImages" / f"{image_id}.jpg").symlink_to(testdata / "voc" / "JPEGImages" / f"{image_id}.jpg")
        (root / "SegmentationClassAug" / f"{image_id}.png").symlink_to(
            testdata / "voc" / "SegmentationClassAug" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    if broken == "missing image":
        (root / "JPEGImages" / "2008_004630.jpg").unlink()
        expected = "missing the image JPEGImages/2008_004630.jpg"
    else:
        mask = root / "SegmentationClassAug" / "2008_004630.png"
        small = Image.open(mask).resize((499, 333), Image.NEAREST)
        mask.unlink()
        small.save(mask)
        expected = "2008_004630.png is 499x333 but its image is 500x333"
    code = evaluate.main(args_for(checkpoint, tmp_path / "out", "--task", "segmentation",
                                  "--data", str(root), "--splits", "derived", "--workers", "2"))
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err


# ----------------------------------------------------------------------------- pixel MAE checkpoints

TINY = dict(patch_size=16, embed_dim=32, depth=1, num_heads=4, decoder_embed_dim=24,
            decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)


def pixel_mae(path, args=None, out_dim=None):
    """A tiny random pixel MAE saved as cvf's trainer does (`args`) or as the public MAE
    checkpoints are ({'model': ...} only)."""
    import argparse

    from model.mae_vqgan import MaeVqgan

    torch.manual_seed(0)
    model = MaeVqgan(None, img_size=64, target="pixels", **TINY)
    state = model.state_dict()
    if out_dim:                                   # a head that is neither pixels nor this VQGAN
        state["decoder_pred.weight"] = torch.zeros(out_dim, TINY["decoder_embed_dim"])
        state["decoder_pred.bias"] = torch.zeros(out_dim)
    ckpt = {"model": state}
    if args is not None:
        ckpt["args"] = argparse.Namespace(**args)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("layout", ["cvf --target pixels --norm-pix-loss", "public MAE"])
def test_pixel_mae_baseline_evaluates_without_a_vqgan(voc_root, tmp_path, layout):
    args = {"arch": None, "target": "pixels", "norm_pix_loss": True} if layout.startswith("cvf") else None
    ckpt = pixel_mae(tmp_path / "mae.pth", args)
    out = tmp_path / "out"
    code = evaluate.main(["--task", "segmentation", "--checkpoint", str(ckpt), "--arch", json.dumps(TINY),
                          "--data", str(voc_root), "--splits", "derived", "--episodes", "3",
                          "--device", "cpu", "--out", str(out), "--layouts", "default", "flip"])
    assert code == 0
    res = read(out)
    assert res["model"] == f"pixel MAE (norm_pix_loss {layout.startswith('cvf')})"
    assert 0 <= res["per_seed"][0]["metrics"]["iou"] <= 1


def test_pixel_prediction_is_pasted_unpatchified_and_denormalised(tmp_path):
    """The hidden quadrant is the model's own prediction, unpatchified, de-normalised as the
    release de-normalises canvases; the visible part is the canvas."""
    from model.mae_vqgan import load_checkpoint
    from model.prompting import inpaint, normalize, predict_logits, quadrant_mask, to_uint8

    model = load_checkpoint(pixel_mae(tmp_path / "mae.pth"), arch=TINY, img_size=64)
    assert model.target == "pixels" and not model.norm_pix_loss
    canvases = normalize(torch.rand(2, 3, 64, 64))
    mask = quadrant_mask(64, 16)
    pasted = inpaint(model, canvases, mask)
    pred = predict_logits(model, canvases, mask).double()          # [B, 16, 768]
    expected = to_uint8(model.unpatchify(pred))
    assert torch.equal(pasted[:, 32:, 32:], expected[:, 32:, 32:])
    assert torch.equal(pasted[:, :32], to_uint8(canvases)[:, :32])
    # patch 15 (bottom-right) is pred[:, 15] laid out as (row, column, channel)
    patch = pred[0, 15].view(16, 16, 3)
    assert torch.equal(to_uint8(model.unpatchify(pred))[0, 48:, 48:],
                       to_uint8(patch.permute(2, 0, 1)[None])[0])


def test_checkpoint_whose_head_cannot_be_told_is_refused_with_its_shapes(tmp_path, capsys):
    ckpt = pixel_mae(tmp_path / "odd.pth", out_dim=100)
    code = evaluate.main(["--task", "synthetic", "--checkpoint", str(ckpt), "--arch", json.dumps(TINY),
                          "--device", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot tell what") and "Traceback" not in err
    assert "decoder_pred.weight (100, 24)" in err and "patch_embed.proj.weight (32, 3, 16, 16)" in err


def test_splits_folder_without_a_fold_file_names_it(checkpoint, voc_root, tmp_path, capsys):
    splits = tmp_path / "splits"
    for fold in (0, 1, 3):
        (splits / "val").mkdir(parents=True, exist_ok=True)
        (splits / "val" / f"fold{fold}.txt").write_text("2007_000033__01\n")
    code = evaluate.main(args_for(checkpoint, tmp_path / "out", "--task", "segmentation",
                                  "--data", str(voc_root), "--splits", str(splits)))
    err = capsys.readouterr().err
    assert code == 2 and "has no val/fold2.txt" in err and str(splits) in err


def test_splits_folder_is_used(checkpoint, voc_root, tmp_path):
    splits = tmp_path / "splits"
    (splits / "val").mkdir(parents=True)
    for fold in range(4):
        (splits / "val" / f"fold{fold}.txt").write_text(
            "2008_004630__01\n2007_000033__01\n" if fold == 0 else "2007_000033__06\n")
    out = tmp_path / "out"
    assert evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data", str(voc_root),
                                  "--splits", str(splits), "--episodes", "2")) == 0
    rows = (out / "episodes.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2:4] for r in rows] == [["2008_004630", "2007_000033"],
                                                 ["2007_000033", "2008_004630"]]
    assert read(out)["splits"] == str(splits)


def test_standard_lists_on_a_partial_voc_copy_say_what_to_do(checkpoint, voc_root, tmp_path, capsys):
    code = evaluate.main(args_for(checkpoint, tmp_path / "out", "--task", "segmentation",
                                  "--data", str(voc_root)))
    err = capsys.readouterr().err
    assert code == 2 and "--splits derived" in err and "standard Pascal-5i list" in err


@pytest.fixture
def small_objects_voc(testdata, tmp_path):
    """One val and one train image, each one small aeroplane (kept by the released <20% filter)."""
    root = tmp_path / "pascal" / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for split, image_id in (("val", "2007_000033"), ("train", "2008_004630")):
        (root / "JPEGImages" / f"{image_id}.jpg").symlink_to(testdata / "voc" / "JPEGImages" / f"{image_id}.jpg")
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as img:
            w, h = img.size
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height></size><object><name>aeroplane"
            f"</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax>"
            f"<ymax>70</ymax></bndbox></object></annotation>")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(image_id + "\n")
    return tmp_path / "pascal"


@pytest.mark.parametrize("case", ["out of range", "missing", "not an index"])
def test_detection_index_that_does_not_fit_is_one_error_line(checkpoint, small_objects_voc, tmp_path,
                                                             capsys, case):
    index = tmp_path / "2012_val_flattened_set.pth"
    extra = ["--detection-index", str(index)]
    if case == "out of range":
        torch.save([(3, 0)], index)
    elif case == "not an index":
        index.write_bytes(b"not a pickle")
    else:
        extra = []
    code = evaluate.main(args_for(checkpoint, tmp_path / "out", "--task", "detection", "--data",
                                  str(small_objects_voc), *extra))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert {"out of range": "does not match the VOC tree: entry 0 points at image 3 of the val",
            "missing": "2012_val_flattened_set.pth",
            "not an index": "is not a detection index"}[case] in err
    if case == "missing":
        assert "--protocol clean" in err and str(small_objects_voc) in err


def test_detection_index_beside_the_voc_root_is_found(checkpoint, small_objects_voc, tmp_path):
    torch.save([(0, 0)], small_objects_voc / "2012_val_flattened_set.pth")
    out = tmp_path / "out"
    assert evaluate.main(args_for(checkpoint, out, "--task", "detection", "--data",
                                  str(small_objects_voc))) == 0
    assert read(out)["protocol"] == "released"
    assert (out / "episodes.csv").read_text().splitlines()[1].split(",")[2:4] == \
        ["2007_000033", "2008_004630"]


def test_released_detection_protocol_refuses_another_area_filter(checkpoint, voc_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(args_for(checkpoint, tmp_path, "--task", "detection", "--data", str(voc_root),
                               "--area-filter", "paper"))
    assert "--protocol clean" in capsys.readouterr().err


def test_prompt_engineering_study_one_table_per_fold(checkpoint, voc_root, tmp_path):
    out = tmp_path / "study"
    code = evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data", str(voc_root),
                                  "--splits", "derived", "--fold", "0", "--episodes", "2",
                                  "--layout", "horizontal", "vertical",
                                  "--mask-style", "bw", "purple", "texture", "edges"))
    assert code == 0
    study = (out / "study.md").read_text()
    assert "## fold 0" in study and "| mask style | horizontal | vertical |" in study
    for style in tasks.MASK_STYLES:
        assert f"| {style} | " in study
        for layout in ("horizontal", "vertical"):
            res = read(out / "fold-0" / f"{layout}-{style}")
            assert res["mask_style"] == style
            assert res["layouts"] == [evaluate.STUDY_LAYOUTS[layout]]
    assert len(json.loads((out / "study.json").read_text())["cells"]) == 8


@pytest.mark.parametrize("style", tasks.MASK_STYLES)
def test_mask_styles_draw_what_they_say(style):
    binary = np.zeros((40, 40), bool)
    binary[10:30, 10:30] = True
    cell = (tasks.styled_target(binary, style, 20) * 255).round().to(torch.uint8).expand(3, -1, -1)
    pixels = {tuple(p) for p in cell.permute(1, 2, 0).reshape(-1, 3).tolist()}
    colours, bg = tasks.style_colours(style)
    if style == "purple":
        assert tuple(cell[:, 10, 10].tolist()) == metrics.YELLOW and tuple(cell[:, 0, 0].tolist()) == metrics.PURPLE
    else:
        assert tuple(cell[:, 0, 0].tolist()) == bg
    if style == "texture":
        assert {metrics.WHITE, metrics.BLUE, metrics.BLACK} <= pixels
    if style == "edges":
        assert tuple(cell[:, 10, 10].tolist()) == bg and tuple(cell[:, 5, 10].tolist()) == metrics.WHITE


def test_released_ensemble_is_four_canvases(testdata):
    episodes = [tasks.Episode("2007_000033", ("2008_004630",), 1)]
    task = tasks.SegmentationTask(testdata / "voc", episodes, size=64, variants=tasks.RELEASED_ENSEMBLE)
    canvas = task[0]["canvas"]
    assert canvas.shape == (4, 3, 64, 64)
    top_right = canvas[:, :, :31, -31:]
    # purple support masks in canvases 2 and 3 (top-right of the default order)
    assert (top_right[2] != top_right[0]).any() and torch.equal(canvas[0, :, -31:, -31:], canvas[2, :, -31:, -31:])
    assert torch.equal(canvas[1, :, :31, -31:], canvas[3, :, :31, -31:])       # flipped: query image


def test_released_ensemble_end_to_end(checkpoint, voc_root, tmp_path):
    out = tmp_path / "ens"
    assert evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data", str(voc_root),
                                  "--splits", "derived", "--episodes", "2", "--released-ensemble")) == 0
    res = read(out)
    assert res["released_ensemble"] and res["layouts"] == ["default", "flip", "default", "flip"]


def test_attention_maps_are_drawn(checkpoint, voc_root, tmp_path):
    out = tmp_path / "attn"
    assert evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data", str(voc_root),
                                  "--splits", "derived", "--episodes", "3", "--attention-maps")) == 0
    img = Image.open(out / "attention.png")
    size = checkpoint["size"]
    assert img.size == (2 * size + 4, 3 * (size + 4))


def test_decoder_attention_rows_are_distributions(testdata, tmp_path):
    from model.mae_vqgan import load_checkpoint
    from model.prompting import decoder_attention, normalize, quadrant_mask

    model = load_checkpoint(pixel_mae(tmp_path / "m.pth"), arch=TINY, img_size=64)
    weights = decoder_attention(model, normalize(torch.rand(2, 3, 64, 64)), quadrant_mask(64, 16))
    assert weights.shape == (2, 16, 16)
    # the cls column is left out, so rows sum to at most one
    assert (weights.sum(-1) <= 1 + 1e-6).all() and (weights >= 0).all()


def test_nearest_supports_from_the_trn_pool_with_a_torchvision_backbone(checkpoint, voc_root, tmp_path):
    import torchvision

    splits = tmp_path / "splits"
    for split, line in (("val", "2007_000033__01\n"), ("trn", "2008_004630__01\n2007_000033__01\n")):
        (splits / split).mkdir(parents=True)
        for fold in range(4):
            (splits / split / f"fold{fold}.txt").write_text(line if fold == 0 else "")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "out"
    assert evaluate.main(args_for(checkpoint, out, "--task", "segmentation", "--data", str(voc_root),
                                  "--splits", str(splits), "--episodes", "2", "--support", "nearest",
                                  "--support-features", "resnet18",
                                  "--support-weights", str(tmp_path / "resnet18.pth"))) == 0
    res = read(out)
    assert (res["support_pool"], res["support_features"]) == ("trn", "resnet18")
    # the query itself is in the trn list: never its own support
    assert (out / "episodes.csv").read_text().splitlines()[1].split(",")[2:4] == ["2007_000033", "2008_004630"]


def test_support_weights_that_are_not_the_backbone_are_refused(checkpoint, voc_root, tmp_path, capsys):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "w.pth")
    code = evaluate.main(args_for(checkpoint, tmp_path / "o", "--task", "segmentation", "--data",
                                  str(voc_root), "--splits", "derived", "--support", "nearest",
                                  "--support-pool", "val", "--support-features", "resnet50",
                                  "--support-weights", str(tmp_path / "w.pth")))
    assert code == 2 and "is not torchvision resnet50 weights" in capsys.readouterr().err


def test_fp32_by_default_with_tf32_off_and_bf16_recorded(checkpoint, tmp_path):
    from model.vqgan import EXACT

    before = [s.fp32_precision for s in evaluation.ExactArithmetic.SWITCHES]
    with evaluation.ExactArithmetic():
        assert [s.fp32_precision for s in evaluation.ExactArithmetic.SWITCHES] == ["ieee"] * 3 and EXACT.on
    assert [s.fp32_precision for s in evaluation.ExactArithmetic.SWITCHES] == before and not EXACT.on
    assert evaluate.parser().parse_args(["--task", "synthetic", "--checkpoint", __file__]).dtype == "fp32"
    out = tmp_path / "bf16"
    assert evaluate.main(args_for(checkpoint, out, "--task", "synthetic", "--episodes", "2",
                                  "--dtype", "bf16")) == 0
    assert read(out)["dtype"] == "bf16" and "bf16" in (out / "results.md").read_text()
