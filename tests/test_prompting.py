"""Canvases, masks and batched inpainting against the reference vectors (every set_* present)."""
from __future__ import annotations


import pytest
import torch

from model.prompting import (cell_size, inpaint, inpaint_ensemble, make_canvas, make_grid_canvas,
                             make_rows_canvas, normalize, predict_logits, quadrant_mask,
                             rows_answer_box, rows_mask, to_uint8)
from reference_vectors import SETS, config, full_state, load, mae_sizes, set_dir


def build_reference_model(set_dir):
    """MaeVqgan with a vectors set's weights, sizes read from its config.json."""
    from model.mae_vqgan import MaeVqgan
    from model.vqgan import VQModel

    cfg = config(set_dir)
    vq = cfg["vqgan"]
    model = MaeVqgan(VQModel(vq["ddconfig"], vq["n_embed"], vq["embed_dim"]), **mae_sizes(cfg))
    model.load_state_dict(full_state(set_dir), strict=True)
    return model.eval(), cfg


@pytest.fixture(scope="module", params=SETS)
def ref(testdata, request):
    """Each reference set present (set_b: 96-px canvas, 6x6 grid); everything derives from sizes."""
    d = set_dir(testdata, request.param)
    model, cfg = build_reference_model(d)
    return model, cfg, load(d, "canvas_parts"), load(d, "mae_io"), load(d, "vqgan_io")


def test_canvas_matches_reference(ref):
    _, cfg, parts, _, _ = ref
    size = cfg["canvas"]["size"]
    assert cell_size(size) == cfg["canvas"]["cell"]
    canvas = make_canvas(parts["support_img"], parts["support_mask"], parts["query_img"],
                         parts["query_mask"], size=size)
    assert torch.equal(canvas, parts["canvas01"])


def test_canvas_geometry_at_224():
    img, target = torch.rand(3, 111, 111), torch.zeros(1, 111, 111)
    canvas = make_canvas(img, target, img, None, size=224)
    assert canvas.shape == (3, 224, 224)
    assert (canvas[:, 111:113, :] == 1).all() and (canvas[:, :, 111:113] == 1).all()  # white cross
    assert torch.equal(canvas[:, :111, :111], img) and torch.equal(canvas[:, 113:, :111], img)
    assert (canvas[:, :111, 113:] == 0).all()           # support target broadcast to 3 channels
    assert (canvas[:, 113:, 113:] == 1).all()           # no query target: white
    flipped = make_canvas(img, target, torch.zeros(3, 111, 111), None, size=224, flip=True)
    assert (flipped[:, :111, 113:] == 0).all() and (flipped[:, 113:, :111] == 0).all()


def test_canvas_resizes_other_sizes():
    canvas = make_canvas(torch.rand(3, 300, 200), torch.ones(1, 50, 50), torch.rand(3, 90, 90),
                         torch.zeros(3, 111, 111), size=96)
    assert canvas.shape == (3, 96, 96) and canvas.min() >= 0 and canvas.max() <= 1
    with pytest.raises(ValueError, match="1 or 3 channels"):
        make_canvas(torch.rand(2, 10, 10), torch.rand(1, 10, 10), torch.rand(3, 10, 10))


def test_quadrant_mask(ref):
    _, cfg, _, io, _ = ref
    size = cfg["canvas"]["size"]
    assert torch.equal(quadrant_mask(size, cfg["mae"]["patch_size"]).float(), io["eval_mask"][0])
    m = quadrant_mask(224, 16).view(14, 14)
    assert m.sum() == 49 and m[7:, 7:].all() and not m[:7].any() and not m[:, :7].any()
    assert quadrant_mask(96, 16).view(6, 6)[3:, 3:].all() and quadrant_mask(96, 16).sum() == 9
    # an odd grid (112/16 = 7): VECTORS.md's rule "visible = rows < g/2 or cols < g/2"
    odd = quadrant_mask(112, 16).view(7, 7)
    assert odd[4:, 4:].all() and odd.sum() == 9


def test_synthetic_layout_geometry():
    figs = [(torch.full((3, 74, 74), 0.5), torch.full((3, 74, 74), 0.25)) for _ in range(3)]
    canvas = make_rows_canvas(figs, size=224)
    for top in (0, 75, 150):
        assert (canvas[:, top:top + 74, 37:111] == 0.5).all()
        assert (canvas[:, top:top + 74, 113:187] == 0.25).all()
    assert (canvas[:, 74] == 0).all() and (canvas[:, :, 111:113] == 0).all()   # black gaps
    assert rows_answer_box(224, 3) == (150, 113, 224, 187)
    hidden = rows_mask(224, 16).view(14, 14)
    assert hidden[9:14, 7:12].all() and hidden.sum() == 25      # rows 9-13 x columns 7-11
    grid = make_grid_canvas([(figs[0][0], figs[0][1])] * 3, figs[0][0], None, size=224)
    assert grid.shape == (3, 224, 224) and (grid[:, 0, 0] == 1).all()   # white background


def test_inpaint_reproduces_reference(ref):
    model, _, _, io, vq = ref
    imgs = vq["x_imagenet_norm"]
    logits = predict_logits(model, imgs)
    torch.testing.assert_close(logits, io["eval_logits"], atol=2e-5, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), io["pred_tokens_eval"])
    pasted = inpaint(model, imgs)
    assert pasted.dtype == torch.uint8 and pasted.shape == io["im_paste"].shape
    size, patch = imgs.shape[-1], model.patch_embed.patch_size
    g = size // patch
    visible = ~quadrant_mask(size, patch).view(g, g).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    # visible pixels: the float64 de-normalisation, exactly (white can be 254, as in the release)
    assert torch.equal(pasted[:, visible], io["im_paste"][:, visible])
    assert torch.equal(to_uint8(imgs), io["orig_hwc"])
    # decoded pixels: at most one level off where a float lands on an integer boundary
    diff = (pasted.int() - io["im_paste"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_inpaint_is_batch_independent(ref):
    model, _, _, _, vq = ref
    imgs = vq["x_imagenet_norm"]
    assert torch.equal(predict_logits(model, imgs).argmax(-1)[1:],
                       predict_logits(model, imgs[1:]).argmax(-1))
    both = inpaint(model, imgs)
    # batched float kernels may move a decoded pixel across an integer boundary, nothing more
    assert (both[1:].int() - inpaint(model, imgs[1:]).int()).abs().max() <= 1
    # an ensemble of the same prompt twice is the prompt itself
    twice = inpaint_ensemble(model, imgs[:, None].repeat(1, 2, 1, 1, 1))
    assert (twice.int() - both.int()).abs().max() <= 1


def test_normalize_float64_round_trip():
    white = torch.ones(1, 3, 8, 8)
    out = to_uint8(normalize(white))
    assert set(out.unique().tolist()) <= {254, 255}      # the release's truncation of 1.0
    assert torch.equal(to_uint8(normalize(torch.zeros(1, 3, 8, 8))), torch.zeros(1, 8, 8, 3, dtype=torch.uint8))


def test_inpaint_derives_everything_from_sizes():
    """A 96-px model (6x6 grid, like set_b): hidden quadrant 3x3 patches, the rest untouched."""
    from model.mae_vqgan import MaeVqgan
    from model.vqgan import VQModel

    torch.manual_seed(0)
    ddconfig = dict(double_z=False, z_channels=32, resolution=96, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[6], dropout=0.0)
    model = MaeVqgan(VQModel(ddconfig, 32, 8), img_size=96, patch_size=16, embed_dim=32, depth=1,
                     num_heads=4, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2).eval()
    canvas = make_canvas(torch.rand(3, 47, 47), torch.ones(1, 47, 47), torch.rand(3, 47, 47),
                         torch.zeros(1, 47, 47), size=96)
    canvases = normalize(canvas[None])
    pasted = inpaint(model, canvases)
    assert pasted.shape == (1, 96, 96, 3)
    truth = to_uint8(canvases)
    assert torch.equal(pasted[:, :48], truth[:, :48]) and torch.equal(pasted[:, :, :48], truth[:, :, :48])
    assert not torch.equal(pasted[:, 48:, 48:], truth[:, 48:, 48:])


def test_inpaint_under_exact_attention_is_the_reference_pixel_for_pixel(ref):
    """With attention written out as released (fp32 evaluation's default), the stored
    `generate_image` output is reproduced exactly, decoded pixels included.

    The vectors were made with one CPU thread (VECTORS.md), and a float sum's order (so its last
    bit) depends on how many threads share it: the comparison runs on one thread too."""
    from model.vqgan import exact_attention

    model, _, _, io, vq = ref
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with exact_attention():
            pasted = inpaint(model, vq["x_imagenet_norm"])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(pasted, io["im_paste"])
