"""The four inpainting models through `model.train` on the CPU with tiny sizes: each one's loss
goes down on a small fixed set, BEiT resumes exactly (block masks drawn per step), and each
checkpoint loads back through the evaluation's loader as its own kind."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from model.inpainters import checkpoint_kind, kind_of, load_inpainter
from model.train import get_args, train
from reference_models import TINY_VQGAN, tiny_vqgan
from test_train import write_images

TINY = ["--input-size", "64", "--embed-dim", "32", "--depth", "2", "--num-heads", "4",
        "--decoder-embed-dim", "24", "--decoder-depth", "1", "--decoder-num-heads", "3",
        "--num-workers", "0", "--no-progress", "--log-every", "1", "--warmup-epochs", "1"]


@pytest.fixture(scope="module")
def vqgan_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqgan")
    (out / "model.yaml").write_text(yaml.safe_dump({"model": {"params": TINY_VQGAN}}))
    torch.save({"state_dict": tiny_vqgan().state_dict()}, out / "last.ckpt")
    return ["--vqgan-config", str(out / "model.yaml"), "--vqgan-ckpt", str(out / "last.ckpt")]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    write_images(folder, 8)
    return folder


# one step per epoch (8 images); MAE-VQGAN's own learning test is test_train's
STEPS = {"beit": 6, "vqgan-gpt": 6, "mae": 12}


@pytest.mark.parametrize("model", list(STEPS))
def test_each_model_learns(model, images, vqgan_files, tmp_path):
    args = get_args([str(images), *TINY, *vqgan_files, "--model", model, "--batch-size", "8",
                     "--epochs", str(STEPS[model]), "--lr", "3e-3", "--warmup-epochs", "1",
                     "--out", str(tmp_path / "run")])
    assert args.target == ("pixels" if model == "mae" else "tokens")
    losses = [loss for _, loss in train(args)["losses"]]
    assert len(losses) == STEPS[model] and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    ckpt = tmp_path / "run" / "checkpoint-last.pth"
    assert checkpoint_kind(ckpt, vqgan_files[1]) == model
    loaded = load_inpainter(ckpt, vqgan_files[1])
    assert kind_of(loaded) == model
    if model == "beit":             # trained on ImageNet-normalised crops, evaluated on the same
        assert loaded.input_norm == "imagenet"


def test_recipes_are_each_models_defaults(images):
    beit = get_args([str(images), "--model", "beit"])
    assert (beit.betas, beit.clip_grad, beit.warmup_epochs, beit.layer_scale) == ((0.9, 0.999), 3.0, 10, 0.1)
    gpt = get_args([str(images), "--model", "vqgan-gpt"])
    assert (gpt.lr_schedule, gpt.weight_decay, gpt.warmup_epochs) == ("constant", 0.01, 0)
    assert get_args([str(images), "--model", "beit", "--betas", "0.8", "0.9"]).betas == [0.8, 0.9]
    mae = get_args([str(images)])
    assert (mae.model, mae.blr, mae.clip_grad) == ("mae-vqgan", 1e-4, None)
    with pytest.raises(SystemExit):
        get_args([str(images), "--model", "beit", "--target", "pixels"])


def test_beit_resume_is_exact(images, vqgan_files, tmp_path):
    common = [str(images), *TINY, *vqgan_files, "--model", "beit", "--batch-size", "2",
              "--accum-iter", "2", "--epochs", "5", "--lr", "1e-3"]
    straight = train(get_args([*common, "--max-steps", "3", "--out", str(tmp_path / "a")]))
    train(get_args([*common, "--max-steps", "1", "--out", str(tmp_path / "b")]))
    resumed = train(get_args([*common, "--max-steps", "3", "--out", str(tmp_path / "b")]))
    assert straight["losses"][1:] == resumed["losses"]
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_beit_trains_under_ddp(images, vqgan_files, tmp_path):
    """torchrun (gloo, 2 ranks): DDP wraps BEiT's training step; the ranks end on equal weights."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model.train", str(images), *TINY, *vqgan_files, "--model", "beit", "--batch-size", "2",
           "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=False)
    assert ckpt["data"]["world_size"] == 2 and ckpt["step"] == 2 and ckpt["kind"] == "beit"
