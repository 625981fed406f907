"""MAE-VQGAN reproduces the reference `MaskedAutoencoderViT` outputs of testdata/vectors/set_*,
loads released-style checkpoints safely, and has the released full-size keys."""
from __future__ import annotations

import argparse
import json
import pickle

import pytest
import torch

from model.mae_vqgan import ARCHS, MaeVqgan, build, load_checkpoint, sincos_pos_embed
from model.vqgan import VQModel
from reference_vectors import SETS, config, full_state, load, mae_sizes, set_dir, vqgan_params

ATOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=SETS)
def ref(testdata, request):
    """Each reference set present (set_a ships; others have other configs)."""
    d = set_dir(testdata, request.param)
    cfg = config(d)
    return {
        "dir": d, "cfg": cfg,
        "vqgan_config": {"model": {"params": vqgan_params(cfg)}},
        "sizes": mae_sizes(cfg),
        "full_state": full_state(d),
        "mae_state": load(d, "mae_state_dict"), "vq_state": load(d, "vqgan_state_dict"),
        "vq_io": load(d, "vqgan_io"),
        "io": load(d, "mae_io"),
    }


def save_released_style(path, model_state):
    """What MAE's `misc.save_model` writes: args is an argparse.Namespace."""
    args = argparse.Namespace(model="mae_vit_large_patch16", batch_size=64, blr=1e-4, mask_ratio=0.75)
    torch.save({"model": model_state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 7,
                "scaler": {"scale": 65536.0}, "args": args}, path)


@pytest.fixture
def model(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-7.pth"
    save_released_style(path, ref["full_state"])
    return load_checkpoint(path, ref["vqgan_config"], arch=ref["sizes"], img_size=ref["sizes"]["img_size"])


def check_reference_forward(model, ref):
    io, imgs = ref["io"], ref["vq_io"]["x_imagenet_norm"]
    with torch.no_grad():
        loss, logits, mask = model(imgs, mask=io["eval_mask"])
        torch.testing.assert_close(logits, io["eval_logits"], **ATOL)
        torch.testing.assert_close(loss, io["eval_loss"], **ATOL)
        assert torch.equal(mask, io["eval_mask"])
        assert torch.equal(logits.argmax(-1), io["pred_tokens_eval"])

        loss, logits, mask = model(imgs, mask_ratio=0.75, noise=io["rand_noise"])
        torch.testing.assert_close(logits, io["rand_logits"], **ATOL)
        torch.testing.assert_close(loss, io["rand_loss"], **ATOL)
        assert torch.equal(mask, io["rand_mask"])


def test_released_checkpoint_reproduces_reference(model, ref):
    assert not model.training
    assert model.decoder_pred.out_features == ref["cfg"]["vqgan"]["n_embed"]  # not a hard-coded 1024
    keys = json.loads((ref["dir"] / "keys.json").read_text())["mae_vqgan_full"]
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    check_reference_forward(model, ref)


@pytest.mark.parametrize("kind", ["eval", "rand"])
def test_loss_is_the_reference_per_token_cross_entropy(model, ref, kind):
    """Our loss over any set of patches is the mean of the reference's per-token CE there."""
    io, tokens = ref["io"], ref["vq_io"]["tokens"]
    ce, logits = io[f"{kind}_ce_per_token"], io[f"{kind}_logits"]
    for mask in (io[f"{kind}_mask"], 1 - io[f"{kind}_mask"], torch.ones_like(ce)):
        torch.testing.assert_close(model.forward_loss(logits, tokens, mask), (ce * mask).sum() / mask.sum(),
                                   **ATOL)


def test_fixed_mask_inference_and_decoding(model, ref):
    io, imgs = ref["io"], ref["vq_io"]["x_imagenet_norm"]
    with torch.no_grad():
        logits = model.predict_logits(imgs, io["eval_mask"].bool())
    torch.testing.assert_close(logits, io["eval_logits"], **ATOL)
    decoded = model.vae.decode_tokens(logits.argmax(-1))
    torch.testing.assert_close(decoded, io["pred_decoded_01"], atol=1e-4, rtol=1e-4)
    ids_shuffle, len_keep = model.masking_order(2, 0.75, mask=io["eval_mask"])
    assert torch.equal(ids_shuffle, io["eval_ids_shuffle"]) and len_keep == int(io["eval_len_keep"])


def test_targets_are_the_vqgan_tokens(model, ref):
    assert torch.equal(model.targets(ref["vq_io"]["x_imagenet_norm"]), ref["vq_io"]["tokens"])


def test_encoder_sees_only_visible_patches(model, ref):
    imgs = ref["vq_io"]["x_imagenet_norm"]
    ids_shuffle, len_keep = model.masking_order(2, 0.75, noise=ref["io"]["rand_noise"])
    assert torch.equal(ids_shuffle, ref["io"]["rand_ids_shuffle"])
    assert torch.equal(ids_shuffle.argsort(1), ref["io"]["rand_ids_restore"])
    latent = model.forward_encoder(imgs, ids_shuffle, len_keep)
    assert latent.shape == (2, 1 + ref["cfg"]["random_mask"]["len_keep"], ref["sizes"]["embed_dim"])


def test_checkpoint_without_vae_takes_vqgan_ckpt(ref, tmp_path):
    save_released_style(tmp_path / "checkpoint-0.pth", ref["mae_state"])
    torch.save({"state_dict": ref["vq_state"]}, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="vqgan_ckpt"):
        load_checkpoint(tmp_path / "checkpoint-0.pth", ref["vqgan_config"], arch=ref["sizes"])
    model = load_checkpoint(tmp_path / "checkpoint-0.pth", ref["vqgan_config"], arch=ref["sizes"],
                            vqgan_ckpt=tmp_path / "last.ckpt")
    check_reference_forward(model, ref)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_loading_allows_only_namespace(ref, tmp_path):
    torch.save({"model": ref["full_state"], "args": Evil()}, tmp_path / "checkpoint-1.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "checkpoint-1.pth", ref["vqgan_config"], arch=ref["sizes"])


def test_checkpoint_in_the_legacy_format_loads(ref, tmp_path):
    """Zip checkpoints are memory-mapped; pre-1.6 (non-zip) files, which cannot be, still load."""
    path = tmp_path / "legacy.pth"
    torch.save({"model": ref["full_state"], "args": argparse.Namespace(model="x")}, path,
               _use_new_zipfile_serialization=False)
    check_reference_forward(load_checkpoint(path, ref["vqgan_config"], arch=ref["sizes"]), ref)


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod."])
def test_checkpoint_saved_from_a_ddp_or_compiled_wrapper_loads(ref, tmp_path, wrapper):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {wrapper + k: v for k, v in ref["full_state"].items()}}, path)
    check_reference_forward(load_checkpoint(path, ref["vqgan_config"], arch=ref["sizes"]), ref)


def test_checkpoint_sizes_from_a_config_section_and_the_position_table(ref, tmp_path):
    """The vectors' whole "mae"/"vqgan" sections (descriptive keys included) are accepted, and
    the image size comes from the checkpoint's position table when not given."""
    save_released_style(tmp_path / "checkpoint-2.pth", ref["full_state"])
    sizes = {k: v for k, v in ref["sizes"].items() if k != "img_size"}
    model = load_checkpoint(tmp_path / "checkpoint-2.pth", ref["cfg"]["vqgan"], arch=sizes)
    assert model.patch_embed.img_size == ref["cfg"]["mae"]["img_size"]
    model = load_checkpoint(tmp_path / "checkpoint-2.pth", ref["cfg"]["vqgan"], arch=ref["cfg"]["mae"])
    check_reference_forward(model, ref)


def test_checkpoint_of_another_architecture_is_a_clear_error(ref, tmp_path):
    path = tmp_path / "checkpoint-3.pth"
    save_released_style(path, ref["full_state"])
    deeper = {**ref["sizes"], "depth": ref["sizes"]["depth"] + 1}
    with pytest.raises(ValueError, match=rf"does not fit --arch .*depth {ref['sizes']['depth']}\b"):
        load_checkpoint(path, ref["vqgan_config"], arch=deeper)
    rows = ref["full_state"]["pos_embed"].shape[1]          # cls + the checkpoint's grid
    with pytest.raises(ValueError, match=rf"pos_embed is \(1, {rows}, .* in the checkpoint"):
        load_checkpoint(path, ref["vqgan_config"], arch=ref["sizes"], img_size=ref["sizes"]["img_size"] + 64)
    other_vq = json.loads(json.dumps(ref["vqgan_config"]))
    other_vq["model"]["params"]["embed_dim"] *= 2
    with pytest.raises(ValueError, match="VQGAN weights .* do not fit"):
        load_checkpoint(path, other_vq, arch=ref["sizes"])
    with pytest.raises(ValueError, match="vqgan_config is needed"):
        load_checkpoint(path, None, arch=ref["sizes"])


def test_mask_rows_must_hide_the_same_count(model, ref):
    mask = ref["io"]["eval_mask"].clone()
    mask[1, 0] = 1
    with pytest.raises(ValueError, match="same number"):
        model(ref["vq_io"]["x_imagenet_norm"], mask=mask)


def test_pos_embed_is_the_reference_table(ref):
    grid = ref["cfg"]["mae"]["patch_grid"][0]
    torch.testing.assert_close(sincos_pos_embed(ref["sizes"]["embed_dim"], grid)[None], ref["mae_state"]["pos_embed"])
    torch.testing.assert_close(sincos_pos_embed(ref["sizes"]["decoder_embed_dim"], grid)[None],
                               ref["mae_state"]["decoder_pos_embed"])


def test_pixel_target_baseline_trains_without_vqgan():
    model = MaeVqgan(None, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                     decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, target="pixels")
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.sum() == 2 * 12
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None


@pytest.mark.parametrize("arch", ["mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"])
def test_full_size_keys_and_shapes(testdata, arch):
    ref = json.loads((testdata / "vectors" / "reference_full_size_keys.json").read_text())
    vq = ref["vqgan_imagenet_f16_1024"]
    with torch.device("meta"):
        model = build(arch, VQModel(**vq["config"]), img_size=224)
    expected = {**ref["mae_vqgan"][arch], **{"vae." + k: v for k, v in vq["keys"].items()}}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert set(ARCHS) >= {"mae_vit_small_patch16", "mae_vit_base_patch16", "mae_vit_large_patch16"}


def test_patch_size_must_match_the_tokenizer(ref):
    vqgan = VQModel(**vqgan_params(ref["cfg"]))
    f = vqgan.downsample_factor                      # half of it: 4x as many patches as tokens
    model = MaeVqgan(vqgan, img_size=4 * f, patch_size=f // 2, embed_dim=32, depth=1, num_heads=2,
                     decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(ValueError, match="patch size"):
        model(torch.randn(1, 3, 4 * f, 4 * f))


def test_arch_from_checkpoint_args():
    from model.mae_vqgan import arch_from_args

    released = argparse.Namespace(model="mae_vit_large_patch16_dec512d8b", input_size=224, blr=1e-4)
    assert arch_from_args(released) == {**ARCHS["mae_vit_large_patch16"], "img_size": 224}
    ours = argparse.Namespace(arch="mae_vit_small_patch16", input_size=96, embed_dim=48, depth=3,
                              num_heads=None)
    assert arch_from_args(ours) == {**ARCHS["mae_vit_small_patch16"], "embed_dim": 48, "depth": 3,
                                     "img_size": 96}
    assert arch_from_args(argparse.Namespace(model="resnet50")) is None
    assert arch_from_args(vars(ours)) == arch_from_args(ours)
    assert arch_from_args(None) is None
