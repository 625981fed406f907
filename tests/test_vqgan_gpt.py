"""The VQGAN transformer against taming-transformers' minGPT on tiny random weights: logits,
taming's own checkpoint files, greedy sequential decoding with a cache equal to the plain loop
and to taming's `sample_with_past`."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch
import yaml

from model.checkpoint import UnreadableCheckpoint
from model.vqgan_gpt import load_checkpoint
from reference_models import mingpt, net2net_yaml, randomize, tiny_vqgan

SIZES = dict(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32)


def reference_gpt(seed=0):
    ref = mingpt().GPT(**SIZES).eval()
    randomize(ref, seed)
    return ref


def write_taming_files(folder, ref, unconditional=True, with_lightning_objects=True):
    """model.yaml + last.ckpt as taming's training writes them: the state_dict of the whole
    Net2NetTransformer (minGPT's `attn.mask` buffers, the VQGAN's `loss.*`) and Lightning's
    class references in its callback states."""
    (folder / "model.yaml").write_text(yaml.safe_dump(net2net_yaml(unconditional=unconditional)))
    state = {**{"transformer." + k: v for k, v in ref.state_dict().items()},
             **{"first_stage_model." + k: v for k, v in tiny_vqgan().state_dict().items()},
             "first_stage_model.loss.logvar": torch.zeros(())}
    ckpt = {"epoch": 7, "global_step": 70, "state_dict": state}
    if not with_lightning_objects:
        torch.save(ckpt, folder / "last.ckpt")
        return
    fake = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = fake.__name__, "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    parents = {n: types.ModuleType(n) for n in ("pytorch_lightning", "pytorch_lightning.callbacks")}
    sys.modules.update({**parents, fake.__name__: fake})
    try:
        torch.save({**ckpt, "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(1.0)}}},
                   folder / "last.ckpt")
    finally:
        for name in (*parents, fake.__name__):
            del sys.modules[name]


@pytest.fixture
def taming_files(tmp_path):
    ref = reference_gpt()
    write_taming_files(tmp_path, ref)
    return ref, tmp_path / "model.yaml", tmp_path / "last.ckpt"


def test_logits_equal_taming(taming_files):
    ref, config, ckpt = taming_files
    m = load_checkpoint(config, ckpt)
    assert m.be_unconditional and m.sos_token == 0 and m.patch_embed.img_size == 64
    idx = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = ref(idx)
        torch.testing.assert_close(m.transformer(idx), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.transformer(idx[:, :5]), ref(idx[:, :5])[0], atol=1e-5, rtol=0)


def plain_loop(m, tokens, mask, cond):
    """The definition: every hidden position, in raster order, the argmax of a full forward of
    the condition and all codes before it."""
    out = tokens.clone()
    for j in mask.nonzero().flatten().tolist():
        seq = torch.cat([cond, out[:, :j]], 1)
        out[:, j] = m.transformer(seq)[:, -1].argmax(-1)
    return out


def test_cached_decode_equals_the_plain_loop(taming_files):
    _, config, ckpt = taming_files
    m = load_checkpoint(config, ckpt)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (4, 16), generator=g)
    quadrant = torch.zeros(4, 4, dtype=torch.bool)
    quadrant[2:, 2:] = True
    for mask in (quadrant.flatten(), torch.rand(16, generator=g) < 0.5, torch.ones(16, dtype=torch.bool)):
        with torch.no_grad():
            got = m.inpaint_tokens(tokens, mask)
            expected = plain_loop(m, tokens, mask, torch.zeros(4, 1, dtype=torch.long))
        assert torch.equal(got, expected)
        assert torch.equal(got[:, ~mask], tokens[:, ~mask])          # visible codes unchanged
        assert torch.equal(m.inpaint_tokens(tokens, mask, use_cache=False), expected)
    assert not torch.equal(got, tokens)


def test_decoding_everything_is_tamings_greedy_sample_with_past(taming_files):
    ref, config, ckpt = taming_files
    m = load_checkpoint(config, ckpt)
    sos = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        expected = mingpt().sample_with_past(sos, ref, steps=16, sample_logits=False)
        got = m.inpaint_tokens(torch.zeros(2, 16, dtype=torch.long), torch.ones(16, dtype=torch.bool))
    assert torch.equal(got, expected)


def test_class_conditional_takes_the_class_index(tmp_path):
    ref = reference_gpt(2)
    write_taming_files(tmp_path, ref, unconditional=False, with_lightning_objects=False)
    m = load_checkpoint(tmp_path / "model.yaml", tmp_path / "last.ckpt")
    assert not m.be_unconditional
    tokens = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(16) >= 10
    with pytest.raises(ValueError, match="class"):
        m.inpaint_tokens(tokens, mask)
    with torch.no_grad():
        got = m.inpaint_tokens(tokens, mask, cond=torch.tensor([3, 7]))
        expected = plain_loop(m, tokens, mask, torch.tensor([[3], [7]]))
    assert torch.equal(got, expected)


def test_training_loss_is_tamings_next_code_cross_entropy(taming_files):
    ref, config, ckpt = taming_files
    m = load_checkpoint(config, ckpt)
    imgs = torch.randn(2, 3, 64, 64)
    z = m.first_stage_model.tokenize(imgs)
    cz = torch.cat([torch.zeros(2, 1, dtype=torch.long), z], 1)
    with torch.no_grad():
        logits, _ = ref(cz[:, :-1])
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), z.reshape(-1))
        torch.testing.assert_close(m.training_loss(imgs), expected, atol=1e-5, rtol=0)


def test_files_that_do_not_fit_or_run_code_are_refused(taming_files, tmp_path):
    _, config, ckpt = taming_files
    other = yaml.safe_load(config.read_text())
    other["model"]["params"]["transformer_config"]["params"]["n_embd"] = 48
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(tmp_path / "other.yaml", ckpt)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "hyper_parameters": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(UnreadableCheckpoint, match="refused"):
        load_checkpoint(config, tmp_path / "evil.ckpt")


def test_evaluate_runs_tamings_class_conditional_files_and_says_what_they_need(tmp_path, capsys):
    from model import evaluate

    write_taming_files(tmp_path, reference_gpt(3), unconditional=False)
    common = ["--task", "synthetic", "--checkpoint", str(tmp_path / "last.ckpt"), "--device", "cpu",
              "--vqgan-config", str(tmp_path / "model.yaml"), "--episodes", "2", "--picture-rows", "0"]
    assert evaluate.main([*common, "--out", str(tmp_path / "a")]) == 2
    assert "--class-label" in capsys.readouterr().err
    assert evaluate.main([*common, "--class-label", "99", "--out", str(tmp_path / "b")]) == 2
    assert "not a class index" in capsys.readouterr().err
    assert evaluate.main([*common, "--class-label", "3", "--out", str(tmp_path / "c")]) == 0
    import json
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert res["model_kind"] == "vqgan-gpt" and "class 3" in res["model"] and res["size"] == 64
