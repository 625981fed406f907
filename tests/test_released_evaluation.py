"""cvf's evaluation against the released code itself (../shared/reference/visual_prompting,
imported with its README's shims; see tests/released_code.py): the Pascal-5i episodes, the
detection episodes on a generated VOC tree, the inpainted pixels on the same weights, the
post-processing and the metrics. Skips with the reason where the released code is absent."""
from __future__ import annotations

import csv
import functools
import io
import json
import tempfile
import types

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model import evaluate, evaluation, metrics, tasks, voc
from model.mae_vqgan import ARCHS
from model.prompting import inpaint, normalize, quadrant_mask
from released_code import DETECTION_INDEX, import_released, tiny_vqgan_factory, unload_released
from reference_vectors import config, full_state, load, set_dir, vqgan_params

SIZES = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
         "decoder_num_heads", "mlp_ratio")


@pytest.fixture(scope="module", autouse=True)
def _paths(tmp_path_factory):
    """The released code, imported from a copy outside the repository; forgotten afterwards."""
    import sys

    copy = import_released(tmp_path_factory.mktemp("released"))
    added = [str(copy), str(copy / "evaluate"), str(copy / "evaluate_detection")]
    sys.path.insert(0, added[-1])
    yield copy
    for path in added:
        while path in sys.path:
            sys.path.remove(path)
    unload_released()


# ----------------------------------------------------------------------------- Pascal-5i

def released_segmentation_episodes(fold: int, seed: int, n: int = 1000):
    """(query, support, class 1..20) of the release's DatasetPASCAL, as its script draws them."""
    import pascal_dataloader

    ds = pascal_dataloader.DatasetPASCAL("/unused", fold, None, None)
    np.random.seed(seed)
    out = []
    for idx in range(n):
        query, support, cls, _ = ds.sample_episode(idx % len(ds.img_metadata))
        out.append((query, str(support), cls + 1))
    return out


@pytest.mark.parametrize("fold", range(4))
def test_pascal5i_episodes_are_the_released_ones(fold):
    """4 folds x 1,000 episodes x seeds 0-2 from the shipped lists == DatasetPASCAL.sample_episode."""
    pairs = voc.fold_list(None, fold)
    for seed in range(3):
        ours = [(e.query, e.supports[0], e.class_id) for e in tasks.random_supports(pairs, 1000, seed)]
        assert ours == released_segmentation_episodes(fold, seed), (fold, seed)


def test_shipped_lists_are_the_released_ones(_paths):
    for split in ("trn", "val"):
        for fold in range(4):
            name = f"{split}/fold{fold}.txt"
            assert (voc.STANDARD_SPLITS / name).read_bytes() == \
                (_paths / "evaluate" / "splits" / "pascal" / name).read_bytes()


def tiny_jpeg(size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_mask_voc(tmp_path_factory):
    """VOCdevkit/VOC2012 holding every image of the standard val lists, each a 12x10 JPEG whose
    mask has one pixel of each listed class: no size rule keeps any pair."""
    tmp = tmp_path_factory.mktemp("tiny-voc")
    root = tmp / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    classes: dict[str, list[int]] = {}
    for fold in range(4):
        for image_id, cls in voc.fold_list(None, fold):
            classes.setdefault(image_id, []).append(cls)
    jpeg = tiny_jpeg()
    for image_id, found in classes.items():
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
        mask = np.zeros((10, 12), np.uint8)
        mask.flat[:len(found)] = found
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(sorted(classes)) + "\n")
    return tmp


@pytest.fixture(scope="module")
def checkpoint(testdata, tmp_path_factory):
    d, tmp = set_dir(testdata, "set_a"), tmp_path_factory.mktemp("ckpt")
    cfg = config(d)
    torch.save({"model": full_state(d), "epoch": 0}, tmp / "checkpoint.pth")
    (tmp / "model.yaml").write_text(yaml.safe_dump({"model": {"params": vqgan_params(cfg)}}))
    (tmp / "arch.json").write_text(json.dumps({k: cfg["mae"][k] for k in SIZES}))
    return ["--checkpoint", str(tmp / "checkpoint.pth"), "--vqgan-config", str(tmp / "model.yaml"),
            "--arch", str(tmp / "arch.json"), "--device", "cpu", "--batch-size", "64",
            "--picture-rows", "0"]


def episodes_csv(path):
    with open(path) as f:
        return [(r["query"], r["supports"], int(r["class_id"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def pixel_checkpoint(tmp_path_factory):
    """A tiny random pixel MAE (no VQGAN to decode: the episodes are the point here)."""
    from model.mae_vqgan import MaeVqgan

    tmp = tmp_path_factory.mktemp("pixel")
    sizes = dict(patch_size=16, embed_dim=32, depth=1, num_heads=4, decoder_embed_dim=24,
                 decoder_depth=1, decoder_num_heads=3, mlp_ratio=2.0)
    torch.manual_seed(0)
    torch.save({"model": MaeVqgan(None, img_size=64, target="pixels", **sizes).state_dict()},
               tmp / "mae.pth")
    return ["--checkpoint", str(tmp / "mae.pth"), "--arch", json.dumps(sizes), "--device", "cpu",
            "--batch-size", "100", "--picture-rows", "0"]


@pytest.mark.slow
def test_evaluate_writes_the_released_episodes_on_a_tiny_mask_tree(pixel_checkpoint, tiny_mask_voc,
                                                                    tmp_path):
    """The issue's "done when": `model.evaluate --task segmentation --fold K --seeds 0` on a VOC
    tree whose masks are tiny writes exactly the released queries and supports, every fold."""
    for fold in range(4):
        out = tmp_path / f"fold{fold}"
        assert evaluate.main(["--task", "segmentation", "--data", str(tiny_mask_voc), "--fold",
                              str(fold), "--seeds", "0", "--out", str(out), *pixel_checkpoint]) == 0
        assert episodes_csv(out / "episodes.csv") == released_segmentation_episodes(fold, 0), fold
    # the derived rule keeps nothing of this tree: only the shipped lists give these episodes
    assert voc.pascal5i_val_list(tiny_mask_voc, 0) == []


# ----------------------------------------------------------------------------- detection

def write_detection_tree(root, n_val=130, n_train=130, seed=0):
    """A VOC tree for detection: XML annotations and tiny JPEGs. About 3/4 of the images hold one
    small object (kept by the released filters), the rest two objects or one large one; every
    class has small single-object train images."""
    rng = np.random.RandomState(seed)
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    jpeg = tiny_jpeg((40, 30))
    for split, year, n in (("val", 2008, n_val), ("train", 2009, n_train)):
        ids = []
        for i in range(n):
            image_id = f"{year}_{i:06d}"
            kind = rng.choice(["single", "single", "single", "two", "large"])
            cls = i % 20 if split == "train" else int(rng.randint(20))
            boxes = [(3, 4, 12, 13)] if kind != "large" else [(1, 1, 38, 28)]
            if kind == "two":
                boxes.append((20, 10, 26, 18))
            objects = "".join(
                f"<object><name>{voc.VOC_CLASSES[cls]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                for x0, y0, x1, y1 in boxes)
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>40</width>"
                f"<height>30</height><depth>3</depth></size>{objects}</annotation>")
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


class Recording:
    """The release's train dataset, recording which index its loop stopped at (the support)."""

    def __init__(self, ds):
        self.ds, self.last = ds, None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, idx):
        self.last = idx
        return self.ds[idx]


def released_detection_episodes(data, seed):
    from evaluate_detection.canvas_ds import CanvasDataset

    ds = CanvasDataset(str(data))
    recorder = Recording(ds.train_ds)
    ds.train_ds = recorder
    index = ds.val_ds.val_flattened_set
    np.random.seed(seed)
    out = []
    for i in range(len(ds)):
        ds[i]
        query = ds.val_ds.images[index[i][0]]
        support = ds.train_ds.ds.images[index[recorder.last][0]]
        out.append((query.rsplit("/", 1)[1][:-4], support.rsplit("/", 1)[1][:-4]))
    return out


def test_detection_episodes_are_the_released_ones(checkpoint, tmp_path, monkeypatch):
    """The released loader (voc_orig + canvas_ds) on a generated VOC tree, its own
    2012_val_flattened_set.pth: `--protocol released` writes the same queries and supports."""
    data = tmp_path / "pascal"
    write_detection_tree(data / "VOCdevkit" / "VOC2012")
    monkeypatch.setattr(torch, "load", functools.partial(torch.load, weights_only=False))
    for seed in (0, 1):
        released = released_detection_episodes(data, seed)
        out = tmp_path / f"det{seed}"
        monkeypatch.undo()
        assert evaluate.main(["--task", "detection", "--data", str(data), "--seeds", str(seed),
                              "--detection-index", str(DETECTION_INDEX), "--out", str(out),
                              *checkpoint]) == 0
        monkeypatch.setattr(torch, "load", functools.partial(torch.load, weights_only=False))
        ours = [(q, s) for q, s, _ in episodes_csv(out / "episodes.csv")]
        assert len(ours) == len(released) > 50 and ours == released, seed


# ----------------------------------------------------------------------------- inpainting

def released_model(d):
    """models_mae.MaskedAutoencoderViT of the set's sizes with the set's weights (the release's
    hard-coded 1024-way head resized to the set's codebook; timm 1.0 blocks given `drop_path`)."""
    import models_mae
    import vqgan

    cfg = config(d)
    vq_state = load(d, "vqgan_state_dict")
    vqgan.get_vq_model = tiny_vqgan_factory(vqgan, vqgan_params(cfg), vq_state)
    models_mae.get_vq_model = vqgan.get_vq_model
    mae = cfg["mae"]
    model = models_mae.MaskedAutoencoderViT(
        img_size=mae["img_size"], patch_size=mae["patch_size"], embed_dim=mae["embed_dim"],
        depth=mae["depth"], num_heads=mae["num_heads"], decoder_embed_dim=mae["decoder_embed_dim"],
        decoder_depth=mae["decoder_depth"], decoder_num_heads=mae["decoder_num_heads"],
        mlp_ratio=mae["mlp_ratio"], norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    model.decoder_pred = torch.nn.Linear(mae["decoder_embed_dim"], cfg["vqgan"]["n_embed"])
    model.load_state_dict(full_state(d), strict=True)
    for block in model.decoder_blocks:
        if not hasattr(block, "drop_path"):
            block.drop_path = torch.nn.Identity()
    for block in model.blocks:     # the pinned timm 0.3.2's attention, not timm 1.0's fused one
        block.attn.forward = types.MethodType(timm_032_attention, block.attn)
    return model.eval()


def timm_032_attention(self, x, **_):
    """timm 0.3.2 `Attention.forward` (the release's requirements.txt pins it)."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B, N, C)
    return self.proj(x)


def released_generate_image(model, canvas, monkeypatch):
    """`mae_utils.generate_image` for a g x g grid: the quadrant mask and its decode at the
    model's size (the release hard-codes 14 x 14 patches and 224 px)."""
    import mae_utils

    size, patch = canvas.shape[-1], model.patch_embed.patch_size[0]
    g = size // patch
    keep = np.zeros((g, g))
    keep[:g // 2] = 1
    keep[:, :g // 2] = 1
    visible = list(keep.flatten().nonzero()[0])
    ids_shuffle = torch.tensor([visible + [i for i in range(g * g) if i not in visible]])
    resize = torch.nn.functional.interpolate
    monkeypatch.setattr(mae_utils, "F", types.SimpleNamespace(
        interpolate=lambda x, size, mode: resize(x, size=(canvas.shape[-1],) * 2, mode=mode)))
    mask, orig, x = mae_utils.generate_raw_prediction("cpu", ids_shuffle, len(visible), model, canvas[None])
    im_paste, _, _ = mae_utils.decode_raw_predicion(mask, model, g, orig, x.argmax(-1))
    monkeypatch.undo()
    return np.uint8(im_paste[0])


def test_inpainted_pixels_equal_generate_image(testdata, monkeypatch):
    """Same weights (set_a), same fp32 canvases: the release's generate_image and cvf's inpaint
    paste identical pixels, on real VOC canvases and on noise."""
    from model.mae_vqgan import load_checkpoint

    d = set_dir(testdata, "set_a")
    ref = released_model(d)
    cfg = config(d)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": full_state(d)}, f"{tmp}/c.pth")
        ours_model = load_checkpoint(f"{tmp}/c.pth", {"model": {"params": vqgan_params(cfg)}},
                                     arch={k: cfg["mae"][k] for k in SIZES},
                                     img_size=cfg["mae"]["img_size"])
    size = cfg["mae"]["img_size"]
    ids = sorted(p.stem for p in (testdata / "voc" / "SegmentationClassAug").glob("*.png"))[:4]
    episodes = [tasks.Episode(q, (s,), 1) for q, s in zip(ids, ids[1:])]
    task = tasks.SegmentationTask(testdata / "voc", episodes, size=size)
    canvases = [task[i]["canvas"][0].double() / 255 for i in range(len(task))]
    canvases.append(torch.from_numpy(np.random.RandomState(0).rand(3, size, size)))
    for canvas01 in canvases:
        # the release normalises in float64 with numpy constants
        canvas = (canvas01 - torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]) / \
            torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
        theirs = released_generate_image(ref, canvas, monkeypatch)
        with evaluation.ExactArithmetic():
            ours = inpaint(ours_model, normalize(canvas01)[None], quadrant_mask(size, 16))[0].numpy()
        assert ours.shape == theirs.shape and (ours == theirs).all()


def test_map_pixels_is_the_released_float64(testdata):
    import vqgan

    d = set_dir(testdata, "set_a")
    cfg = config(d)
    theirs = tiny_vqgan_factory(vqgan, vqgan_params(cfg), None)()
    from model.vqgan import VQModel

    ours = VQModel(**vqgan_params(cfg))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(ours.map_pixels(x), theirs.map_pixels(x))


def test_small_arch_has_the_released_heads(testdata):
    import models_mae
    import vqgan

    cfg = config(set_dir(testdata, "set_a"))
    vqgan.get_vq_model = models_mae.get_vq_model = tiny_vqgan_factory(vqgan, vqgan_params(cfg), None)
    for name, sizes in ARCHS.items():
        if name != "mae_vit_small_patch16":     # the others are too large to build in a test
            continue
        ref = getattr(models_mae, name)()
        assert ref.blocks[0].attn.num_heads == sizes["num_heads"] == 12
        assert ref.decoder_blocks[0].attn.num_heads == sizes["decoder_num_heads"]


# ----------------------------------------------------------------------------- metrics

def test_box_post_processing_is_to_rectangle():
    """cv2 components, ties resolved as the release resolves them, on random and tied masks."""
    from box_ops import to_rectangle

    rng = np.random.RandomState(0)
    images = [rng.rand(20, 20) > 0.6 for _ in range(30)]
    tie = np.zeros((20, 20), bool)
    tie[2:5, 2:5] = tie[10:13, 12:15] = True             # two 9-pixel components
    images += [tie, np.zeros((20, 20), bool), np.ones((20, 20), bool)]
    for binary in images:
        rgb = torch.from_numpy(np.repeat(np.where(binary, 255, 0)[..., None], 3, -1))
        theirs = to_rectangle(rgb.clone(), 0, 0)[..., 0].numpy() == 255
        ours = metrics.to_box(rgb.to(torch.uint8)[None])[0, ..., 0].numpy() == 255
        assert (ours == theirs).all()


def test_segmentation_scores_are_calc_metric():
    from segmentation_utils import _calc_metric

    rng = np.random.RandomState(1)
    colours = np.array([metrics.WHITE, metrics.BLACK, metrics.BLUE], np.uint8)
    for _ in range(20):
        ours = colours[rng.randint(0, 3, (11, 11))]
        target = colours[rng.randint(0, 2, (11, 11))]
        theirs = _calc_metric(ours, target)
        got = metrics.segmentation_scores(torch.from_numpy(ours), torch.from_numpy(target))
        for k, v in theirs.items():
            assert got[k].item() == pytest.approx(float(v), abs=1e-6), k
