"""BEiT against unilm's own code on tiny random weights: logits, checkpoint loading, block-wise
masking, and OpenAI's DALL-E dVAE read from whole pickled modules without executing them."""
from __future__ import annotations

import argparse
import os
import pickle
import random
from functools import partial

import pytest
import torch

from model.beit import BlockMasking, load_checkpoint, load_dall_e
from model.checkpoint import UnreadableCheckpoint
from reference_models import dall_e, randomize, unilm

TINY = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=4, vocab_size=50)
VARIANTS = {  # unilm's flags -> what they build
    "shared-bias-layer-scale": dict(init_values=0.1, use_abs_pos_emb=False, use_shared_rel_pos_bias=True),
    "abs-positions-no-layer-scale": dict(init_values=None, use_abs_pos_emb=True),
    "block-bias-layer-scale": dict(init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=True),
}


def reference_model(variant, seed=0):
    modeling_pretrain, _ = unilm()
    torch.manual_seed(seed)
    ref = modeling_pretrain.VisionTransformerForMaskedImageModeling(
        **TINY, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **VARIANTS[variant]).eval()
    randomize(ref, seed)
    return ref


def inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, 3, 64, 64, generator=g)
    mask = torch.rand(n, 16, generator=g) < 0.4
    mask[:, 0] = True                          # every sample hides something
    return imgs, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("with_args", [True, False])
def test_logits_equal_unilm(variant, with_args, tmp_path):
    ref = reference_model(variant)
    state = ref.state_dict()
    assert any("gamma" in k for k in state) == (VARIANTS[variant]["init_values"] is not None)
    ckpt = {"model": state, "optimizer": {}, "epoch": 3, "scaler": {}}
    arch = None
    if with_args:   # as unilm's utils.save_model writes it: its argparse Namespace under "args"
        ckpt["args"] = argparse.Namespace(model="beit_base_patch16_224_8k_vocab", input_size=64,
                                          num_heads=4, imagenet_default_mean_and_std=False)
    if not with_args or variant.startswith("abs"):   # no table shows the heads: say the sizes
        arch = dict(TINY)
    torch.save(ckpt, tmp_path / "checkpoint-799.pth")
    model = load_checkpoint(tmp_path / "checkpoint-799.pth", arch=arch)
    imgs, mask = inputs()
    with torch.no_grad():
        expected = ref(imgs, mask, return_all_tokens=True)
        got = model(imgs, mask, return_all_tokens=True)
        assert got.shape == (3, 16, 50)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
        torch.testing.assert_close(model(imgs, mask), ref(imgs, mask), atol=2e-5, rtol=0)


def test_headless_sizes_without_args_need_arch(tmp_path):
    """Absolute positions and no args: the heads cannot be read off the tensors, so ViT's 64
    channels per head is assumed - a wrong guess for this tiny model, which `arch` fixes."""
    ref = reference_model("abs-positions-no-layer-scale")
    torch.save(ref.state_dict(), tmp_path / "bare.pth")
    imgs, mask = inputs()
    guessed = load_checkpoint(tmp_path / "bare.pth")
    assert guessed.blocks[0].attn.num_heads == 1
    right = load_checkpoint(tmp_path / "bare.pth", arch=TINY)
    with torch.no_grad():
        torch.testing.assert_close(right(imgs, mask, return_all_tokens=True),
                                   ref(imgs, mask, return_all_tokens=True), atol=2e-5, rtol=0)


def test_checkpoint_that_does_not_fit_names_what(tmp_path):
    ref = reference_model("shared-bias-layer-scale")
    torch.save({"model": ref.state_dict()}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(tmp_path / "c.pth", arch=dict(TINY, embed_dim=48))


def test_checkpoint_holding_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": {"x": torch.zeros(1)}, "args": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UnreadableCheckpoint, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")


def test_block_masking_draws_as_unilm():
    _, masking_generator = unilm()
    for seed in range(5):
        random.seed(seed)
        expected = masking_generator.MaskingGenerator((14, 14), num_masking_patches=75,
                                                      min_num_patches=16)()
        got = BlockMasking(14, 75, 16)(random.Random(seed))
        assert (got == expected).all()
        assert 16 <= got.sum() <= 75


def save_whole_module(module, path):
    torch.save(module, path)        # as OpenAI's files are: the pickled module itself


def test_dall_e_files_load_without_running_them_and_compute_as_dall_e(tmp_path):
    encoder_mod, decoder_mod = dall_e()
    torch.manual_seed(0)
    enc = encoder_mod.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
    dec = decoder_mod.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512)
    for m in (enc, dec):
        randomize(m, 3, 0.05)
    save_whole_module(enc, tmp_path / "encoder.pkl")
    save_whole_module(dec, tmp_path / "decoder.pkl")
    vae = load_dall_e(tmp_path, token_size=32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vae.encoder(x), enc(x), atol=1e-5, rtol=1e-5)
        z = torch.nn.functional.one_hot(torch.randint(0, 512, (2, 4, 4)), 512).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(vae.decoder(z), dec(z), atol=1e-5, rtol=1e-5)
        assert vae.decode_tokens(torch.randint(0, 512, (2, 16))).shape == (2, 3, 32, 32)
        assert vae.tokenize(torch.randn(2, 3, 64, 64)).shape == (2, 16)


def test_dall_e_file_that_calls_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "encoder.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(ValueError, match="refused|not a readable"):
        load_dall_e(encoder=tmp_path / "encoder.pkl")


def test_unilm_checkpoint_inpaints_with_dall_e_codes(tmp_path):
    """unilm's layout + OpenAI's files -> the evaluation's loader tells BEiT, reads the dVAE and
    paints the hidden quadrant from DALL-E codes decoded at half the canvas size; visible pixels
    stay the canvas's."""
    from model.inpainters import load_inpainter
    from model.prompting import inpaint, normalize, quadrant_mask, to_uint8

    modeling_pretrain, _ = unilm()
    encoder_mod, decoder_mod = dall_e()
    ref = modeling_pretrain.VisionTransformerForMaskedImageModeling(
        **dict(TINY, vocab_size=512), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        init_values=0.1, use_abs_pos_emb=False, use_shared_rel_pos_bias=True)
    randomize(ref, 4)
    torch.save({"model": ref.state_dict(), "args": argparse.Namespace(model="beit_base_patch16_224_8k_vocab")},
               tmp_path / "beit.pth")
    torch.manual_seed(0)
    (tmp_path / "dall_e").mkdir()
    save_whole_module(decoder_mod.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512),
                      tmp_path / "dall_e" / "decoder.pkl")
    with pytest.raises(ValueError, match="--dall-e"):
        load_inpainter(tmp_path / "beit.pth")
    model = load_inpainter(tmp_path / "beit.pth", dall_e=tmp_path / "dall_e")
    assert model.input_norm == "inception" and model.vae.encoder is None
    canvases = normalize(torch.rand(2, 3, 64, 64))
    out = inpaint(model, canvases, quadrant_mask(64, 16))
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
    assert torch.equal(out[:, :32], to_uint8(canvases)[:, :32])
    with torch.no_grad():      # the codes pasted are BEiT's argmax over unilm's [-1, 1] input
        x = (canvases.float() * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
             + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) * 2 - 1
        mask = quadrant_mask(64, 16).expand(2, -1)
        torch.testing.assert_close(model.predict_logits(canvases.float(), mask),
                                   ref.eval()(x, mask, return_all_tokens=True), atol=2e-5, rtol=0)
