"""The trainer on CPU with tiny configs: it learns, resumes exactly, and writes checkpoints
the released-style loader reads. The VQGAN is set_a's tiny reference tokenizer (64 px, f16)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from model.data import CropDataset, ResumableSampler, TokenCache, list_images, normalize
from model.mae_vqgan import load_checkpoint
from model.train import get_args, train
from model.vqgan import load_vqgan
from reference_vectors import config, load, set_dir, vqgan_params

TINY = ["--input-size", "64", "--embed-dim", "32", "--depth", "2", "--num-heads", "4",
        "--decoder-embed-dim", "24", "--decoder-depth", "1", "--decoder-num-heads", "3",
        "--num-workers", "0", "--no-progress", "--log-every", "1", "--warmup-epochs", "1"]


@pytest.fixture(scope="module")
def vqgan_files(testdata, tmp_path_factory):
    """taming-style model.yaml + last.ckpt holding set_a's reference VQGAN."""
    d = set_dir(testdata, "set_a")
    out = tmp_path_factory.mktemp("vqgan")
    (out / "model.yaml").write_text(yaml.safe_dump({"model": {"params": vqgan_params(config(d))}}))
    torch.save({"state_dict": load(d, "vqgan_state_dict")}, out / "last.ckpt")
    return ["--vqgan-config", str(out / "model.yaml"), "--vqgan-ckpt", str(out / "last.ckpt")]


def write_images(folder, n, seed=0):
    """Flat backgrounds with one coloured rectangle, of varied sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        a = np.empty((60 + 3 * i, 80, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, 30, 2)
        a[y:y + 30, x:x + 40] = rng.integers(0, 256, 3)
        files.append(folder / f"{i:02d}.png")
        Image.fromarray(a).save(files[-1])
    return files


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    write_images(folder, 8)
    return folder


def test_loss_goes_down_on_a_small_fixed_set(images, vqgan_files, tmp_path):
    args = get_args([str(images), *TINY, *vqgan_files, "--batch-size", "8", "--epochs", "14",
                     "--lr", "2e-3", "--out", str(tmp_path / "run")])
    losses = [loss for _, loss in train(args)["losses"]]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
    assert (tmp_path / "run" / "tb").is_dir()


def test_resume_is_exact(images, vqgan_files, tmp_path):
    """4 steps straight == 1 step, stop, resume for 3 (crossing an epoch boundary, with
    gradient accumulation, and decoding in a worker process on the resumed side)."""
    common = [str(images), *TINY, *vqgan_files, "--batch-size", "2", "--accum-iter", "2",
              "--epochs", "5", "--lr", "1e-3"]
    straight = train(get_args([*common, "--max-steps", "4", "--out", str(tmp_path / "a")]))
    train(get_args([*common, "--max-steps", "1", "--out", str(tmp_path / "b")]))
    resumed = train(get_args([*common, "--max-steps", "4", "--out", str(tmp_path / "b"),
                              "--num-workers", "1"]))
    assert straight["step"] == resumed["step"] == 4 and straight["epoch"] == resumed["epoch"] == 2
    a = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert straight["losses"][-3:] == resumed["losses"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # A different run really differs (the test can fail).
    other = train(get_args([*common, "--max-steps", "4", "--seed", "1", "--out", str(tmp_path / "c")]))
    assert other["losses"] != straight["losses"]


def test_checkpoint_loads_like_a_released_one(images, vqgan_files, tmp_path):
    args = get_args([str(images), *TINY, *vqgan_files, "--batch-size", "4", "--epochs", "1",
                     "--save-epochs", "1", "--out", str(tmp_path)])
    train(args)
    assert (tmp_path / "checkpoint-1.pth").is_file()
    sizes = dict(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=24,
                 decoder_depth=1, decoder_num_heads=3)
    model = load_checkpoint(tmp_path / "checkpoint-last.pth", args.vqgan_config, arch=sizes, img_size=64)
    ckpt = torch.load(tmp_path / "checkpoint-last.pth", weights_only=False)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ckpt)
    assert torch.equal(model.decoder_pred.weight, ckpt["model"]["decoder_pred.weight"])


def test_cached_tokens_match_on_the_fly_tokens(images, vqgan_files, tmp_path):
    cache = tmp_path / "cache"
    args = get_args([str(images), *TINY, *vqgan_files, "--batch-size", "4", "--epochs", "2",
                     "--token-cache", str(cache), "--crops-per-image", "2", "--out", str(tmp_path / "run")])
    result = train(args)
    assert result["step"] == 4
    files = list_images(images)
    tc = TokenCache(cache)
    assert np.load(cache / "tokens.npy").shape == (8, 2, 16)
    vq = load_vqgan(args.vqgan_config, args.vqgan_ckpt)
    ds = CropDataset(files, 64, (0.2, 1.0), seed=0)
    crops = torch.stack([ds.crop(i, k) for i in range(8) for k in range(2)])
    expected = vq.tokenize(normalize(crops)).view(8, 2, 16)
    cached = torch.stack([torch.stack([tc.tokens(i, k) for k in range(2)]) for i in range(8)])
    assert torch.equal(cached, expected)
    with pytest.raises(ValueError, match="other data"):
        tc.check(files[:-1], 64, (0.2, 1.0), 0, 64)


def test_pixel_target_needs_no_vqgan(images, tmp_path):
    args = get_args([str(images), *TINY, "--target", "pixels", "--batch-size", "4", "--epochs", "1",
                     "--vqgan-config", str(tmp_path / "none.yaml"), "--out", str(tmp_path)])
    assert train(args)["step"] == 2


def test_missing_vqgan_says_where_files_go(images, tmp_path):
    args = get_args([str(images), *TINY, "--vqgan-config", str(tmp_path / "model.yaml"),
                     "--vqgan-ckpt", str(tmp_path / "last.ckpt"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="model.yaml.*last.ckpt"):
        train(args)


def test_manifest_with_official_layout(tmp_path):
    """A published manifest + the folder `pipeline.rebuild` wrote (official file names)."""
    root = tmp_path / "rebuilt"
    (root / "train" / "2101.00001").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "train" / "2101.00001" / "fig_a.png")
    Image.new("RGB", (40, 30), "blue").save(root / "train" / "2101.00001" / "plot.pdf_2101.00001_0.png")
    rows = [{"paper_id": "2101.00001", "img_name": "fig_a.png", "split": "train"},
            {"paper_id": "2101.00001", "img_name": "plot.pdf", "split": "train"},
            {"paper_id": "2101.00001", "img_name": "fig_a.png", "split": "train"},  # official dup
            {"paper_id": "2101.00002", "img_name": "gone.png", "split": "train"},
            {"paper_id": "2101.00003", "img_name": "v.png", "split": "val"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    with pytest.warns(UserWarning, match="1 of 3 images"):
        files = list_images(tmp_path / "train.parquet", root, split="train")
    assert [f.name for f in files] == ["fig_a.png", "plot.pdf_2101.00001_0.png"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"image_path": "train/2101.00001/fig_a.png"}) + "\n")
    assert list_images(tmp_path / "m.jsonl", root) == [root / "train/2101.00001/fig_a.png"]
    with pytest.raises(ValueError, match="--images"):
        list_images(tmp_path / "train.parquet")


def test_wrong_data_path_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    from model.data import main as data_main

    with pytest.raises(SystemExit, match="error: no such manifest or image folder"):
        train(get_args([str(tmp_path / "nothing"), "--target", "pixels", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit) as exit_:  # the CLI: the one line on stderr, exit 2
        data_main(["pack", str(tmp_path / "nothing"), "--out", str(tmp_path / "shards")])
    assert exit_.value.code == 2 and "error: no such manifest or image folder" in capsys.readouterr().err


def test_sampler_shards_ranks_disjointly_and_resumes():
    shares = []
    for rank in range(3):
        s = ResumableSampler(10, rank, 3, seed=5)
        s.set_epoch(2)
        shares.append([i for i, _ in s])
    assert all(len(x) == 3 for x in shares)
    assert len(set(sum(shares, []))) == 9
    s = ResumableSampler(10, 1, 3, seed=5)
    s.set_epoch(2, start=1)
    assert [i for i, _ in s] == shares[1][1:]


def test_bad_image_is_replaced_not_fatal(tmp_path):
    files = write_images(tmp_path, 2)
    files[0].write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="unreadable"):
        crop = CropDataset(files, 32)[(0, 0)][0]
    assert crop.shape == (3, 32, 32) and crop.dtype == torch.uint8


def test_tar_shards_give_the_same_crops(images, tmp_path):
    from model.data import main as data_main

    files = list_images(images)
    data_main(["pack", str(images), "--out", str(tmp_path / "shards"), "--shard-size", "3"])
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(shards) == 3
    members = list_images(tmp_path / "shards")
    assert len(members) == len(files)
    a, b = CropDataset(files, 32, seed=3), CropDataset(members, 32, seed=3)
    for i in range(len(files)):
        assert torch.equal(a[(i, 1)][0], b[(i, 1)][0])
    # A rerun skips finished shards and redoes a missing one, with identical bytes.
    before = shards[1].read_bytes()
    shards[1].unlink()
    data_main(["pack", str(images), "--out", str(tmp_path / "shards"), "--shard-size", "3"])
    assert shards[1].read_bytes() == before


def test_packing_can_shrink_and_reencode(images, tmp_path):
    from model.data import pack_shards

    files = list_images(images)
    pack_shards(files, tmp_path, shard_size=100, max_side=40, jpeg_quality=90, progress=False)
    members = list_images(tmp_path)
    assert [m.name for m in members] == [f"{i:09d}.jpg" for i in range(len(files))]
    crop = CropDataset(members, 32)[(0, 0)][0]
    assert crop.shape == (3, 32, 32)
    with Image.open(io.BytesIO(members[-1].read())) as img:
        assert img.format == "JPEG" and max(img.size) == 40


def test_cli_manifest_to_checkpoint_to_evaluate(images, vqgan_files, tmp_path):
    """The user's path: `python -m model.train` on a published manifest, then the checkpoint it
    wrote loads by itself (sizes from its args) and runs in `python -m model.evaluate`."""
    from model import evaluate

    rows = [{"paper_id": f"2101.{i:05d}", "img_name": p.name, "split": "train", "image_path": p.name}
            for i, p in enumerate(sorted(images.glob("*.png")))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "model.train", str(tmp_path / "train.parquet"), "--images", str(images),
           *TINY, *vqgan_files, "--batch-size", "4", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(out / "checkpoint-last.pth") in done.stdout and str(out / "tb") in done.stdout  # where it wrote
    model = load_checkpoint(out / "checkpoint-last.pth", vqgan_files[1], arch=None)
    assert (model.patch_embed.img_size, len(model.blocks), model.decoder_pred.in_features) == (64, 2, 24)
    code = evaluate.main(["--task", "synthetic", "--checkpoint", str(out / "checkpoint-last.pth"),
                          "--vqgan-config", vqgan_files[1], "--episodes", "2", "--batch-size", "2",
                          "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert code == 0 and json.loads((tmp_path / "eval" / "results.json").read_text())["size"] == 64


# -- mixed data, --init, resume refusals, the token cache under DDP ---------------------------

def test_mixture_sampler_draws_by_weight_and_resumes():
    from model.data import MixtureSampler

    s = MixtureSampler([8, 4], [1, 3], seed=2)
    assert s.draws_per_epoch() == [3, 9]
    epochs = []
    for epoch in range(3):
        s.set_epoch(epoch)
        epochs.append(list(s))
    for items in epochs:
        assert len(items) == 12
        assert sum(i >= 8 for i, _ in items) == 9       # weight 3 of 4: source B (8..11) 9 draws
    # each source walks its own permutations: source A's 9 draws over 3 epochs cover its 8 images
    a = [i for items in epochs for i, _ in items if i < 8]
    assert sorted(set(a)) == list(range(8))
    # a repeated image comes with another pass number (a fresh crop)
    b = [(i, p) for items in epochs for i, p in items if i >= 8]
    assert len(set(b)) == len(b)
    # deterministic, resumable, and ranks take disjoint shares
    s.set_epoch(1, start=5)
    assert list(s) == epochs[1][5:]
    shares = []
    for rank in range(2):
        r = MixtureSampler([8, 4], [1, 3], rank, 2, seed=2)
        r.set_epoch(1)
        shares.append(list(r))
    assert sorted(shares[0] + shares[1]) == sorted(epochs[1])
    with pytest.raises(ValueError, match="weights"):
        MixtureSampler([8, 4], [1], seed=0)


def test_mixed_sources_train_resume_exactly_and_refuse_changes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_images(a, 6, seed=1)
    write_images(b, 4, seed=2)
    common = ["--data", str(a), "--data", str(b), "--data-weights", "1", "3", *TINY, "--target", "pixels",
              "--batch-size", "2", "--epochs", "3", "--lr", "1e-3"]
    # 10 images, batch 2: 5 steps an epoch; stop at 3, resume across the epoch boundary to 7
    straight = train(get_args([*common, "--max-steps", "7", "--out", str(tmp_path / "s")]))
    train(get_args([*common, "--max-steps", "3", "--out", str(tmp_path / "r")]))
    resumed = train(get_args([*common, "--max-steps", "7", "--out", str(tmp_path / "r")]))
    assert straight["losses"][-4:] == resumed["losses"] and len(resumed["losses"]) == 4
    ckpt = torch.load(tmp_path / "r" / "checkpoint-last.pth", weights_only=False)
    other = torch.load(tmp_path / "s" / "checkpoint-last.pth", weights_only=False)
    assert all(torch.equal(ckpt["model"][k], other["model"][k]) for k in ckpt["model"])
    assert ckpt["args"].data == [str(a), str(b)] and ckpt["args"].data_weights == [1.0, 3.0]
    mixture = ckpt["run"]["data mixture (sources, --data-weights, images per source)"]
    assert mixture == [[str(a), str(b)], [1.0, 3.0], [6, 4]]
    out = ["--out", str(tmp_path / "r"), "--max-steps", "9"]
    for changed, named in ((["--data-weights", "1", "1"], "data mixture"), (["--accum-iter", "2"], "--accum-iter"),
                           (["--seed", "3"], "--seed"), (["--epochs", "9"], "schedule")):
        args = [*common[:4], *common[7:]] if changed[0] == "--data-weights" else common
        with pytest.raises(SystemExit, match=f"error: cannot resume .*{re.escape(named)}"):
            train(get_args([*args, *changed, *out]))


def test_init_starts_from_a_released_style_checkpoint(images, vqgan_files, tmp_path):
    first = get_args([str(images), *TINY, *vqgan_files, "--batch-size", "4", "--epochs", "1",
                      "--lr", "1e-2", "--out", str(tmp_path / "a")])
    train(first)
    trained = torch.load(tmp_path / "a" / "checkpoint-last.pth", weights_only=False)["model"]
    # the released files hold the MAE only: its VQGAN comes from --vqgan-ckpt
    released_style = tmp_path / "released.pth"
    torch.save({"model": {k: v for k, v in trained.items() if not k.startswith("vae.")}}, released_style)
    fine = train(get_args([str(images), *TINY, *vqgan_files, "--batch-size", "4", "--epochs", "1",
                           "--lr", "0", "--weight-decay", "0", "--init", str(released_style),
                           "--max-steps", "1", "--out", str(tmp_path / "b")]))
    assert fine["step"] == 1
    tuned = torch.load(tmp_path / "b" / "checkpoint-last.pth", weights_only=False)
    assert all(torch.equal(tuned["model"][k], trained[k]) for k in trained)   # lr 0: still the init
    assert tuned["args"].init == str(released_style)
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 7)}}, wrong)
    with pytest.raises(SystemExit, match="error: --init .* does not fit"):
        train(get_args([str(images), *TINY, *vqgan_files, "--batch-size", "4", "--init", str(wrong),
                        "--out", str(tmp_path / "c")]))


def test_ddp_two_ranks_on_cpu_build_the_token_cache_in_parallel(images, vqgan_files, tmp_path):
    """torchrun (gloo, loopback, a free port) with 2 ranks: each takes half of every epoch, and
    each tokenizes half the images for the token cache, which rank 0 joins into the same cache
    one process would build."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model.train", str(images), *TINY, *vqgan_files, "--batch-size", "2", "--epochs", "2",
           "--token-cache", str(cache), "--crops-per-image", "2", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=False)
    assert ckpt["data"]["world_size"] == 2 and ckpt["step"] == 4  # 8 images / 2 ranks / batch 2, x2 epochs
    assert len(ckpt["rng"]) == 2
    said = done.stdout + done.stderr
    for rank in (0, 1):
        assert f"token cache: rank {rank} of 2 tokenized 8 crops of 4 images" in said, said[-2000:]
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["built_by_ranks"] == 2 and not list(cache.glob(".part-*"))
    vq = load_vqgan(vqgan_files[1], vqgan_files[3])
    ds = CropDataset(list_images(images), 64, (0.2, 1.0), seed=0)
    crops = torch.stack([ds.crop(i, k) for i in range(8) for k in range(2)])
    expected = vq.tokenize(normalize(crops)).view(8, 2, 16)
    assert torch.equal(torch.from_numpy(np.load(cache / "tokens.npy").astype(np.int64)), expected)
