"""The VQGAN tokenizer reproduces the reference (taming) outputs of testdata/vectors/set_*."""
from __future__ import annotations

import json
import pickle
import sys
import types

import pytest
import torch
import yaml

from model.vqgan import VQModel, load_vqgan
from reference_vectors import SETS, config, load, set_dir

ATOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=SETS)
def ref(testdata, request):
    """Each reference set present (set_a ships; others have other configs)."""
    d = set_dir(testdata, request.param)
    return {"dir": d, "cfg": config(d), "state": load(d, "vqgan_state_dict"), "io": load(d, "vqgan_io")}


def taming_yaml(cfg: dict) -> dict:
    """The shape of taming's model.yaml, with the lossconfig we ignore."""
    v = cfg["vqgan"]
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                      "params": {"embed_dim": v["embed_dim"], "n_embed": v["n_embed"],
                                 "ddconfig": v["ddconfig"],
                                 "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}}}


@pytest.fixture(scope="module")
def vqgan(ref):
    v = ref["cfg"]["vqgan"]
    model = VQModel(v["ddconfig"], v["n_embed"], v["embed_dim"])
    model.load_state_dict(ref["state"], strict=True)
    return model.eval()


def test_state_dict_keys_match_taming(ref, vqgan):
    keys = json.loads((ref["dir"] / "keys.json").read_text())["vqgan"]
    assert {k: list(v.shape) for k, v in vqgan.state_dict().items()} == keys


def test_reproduces_reference_outputs(ref, vqgan):
    io = ref["io"]
    with torch.no_grad():
        torch.testing.assert_close(vqgan.map_pixels(io["x_imagenet_norm"]), io["x_vqgan_in"], **ATOL)
        enc = vqgan.encoder(io["x_vqgan_in"])
        torch.testing.assert_close(enc, io["encoder_out"], **ATOL)
        torch.testing.assert_close(vqgan.quant_conv(enc), io["z_pre_quant"], **ATOL)
        z_q, qloss, _ = vqgan.encode(io["x_vqgan_in"])
        torch.testing.assert_close(z_q, io["z_q"], **ATOL)
        torch.testing.assert_close(qloss, io["qloss"], **ATOL)
        torch.testing.assert_close(vqgan.decode(z_q), io["decoded_raw"], atol=1e-4, rtol=1e-4)
    tokens = vqgan.tokenize(io["x_imagenet_norm"])
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, io["tokens"])


def test_decode_tokens_is_clamped_reference_decode(ref, vqgan):
    io = ref["io"]
    images = vqgan.decode_tokens(io["tokens"])
    expected = (io["decoded_raw"].clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=1e-4)
    assert images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="grid"):
        vqgan.decode_tokens(io["tokens"][:, :-1])


def test_load_vqgan_from_yaml_and_lightning_ckpt(ref, tmp_path):
    """A taming `last.ckpt` holds `loss.*` weights and Lightning class references in its
    callback states; both are handled without Lightning installed and without unsafe pickle."""
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(taming_yaml(ref["cfg"])))
    # Pickle a class reference under Lightning's module name, then make the module vanish.
    fake = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    class ModelCheckpoint:  # noqa: N801
        pass
    ModelCheckpoint.__module__ = fake.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    parents = {name: types.ModuleType(name) for name in ("pytorch_lightning", "pytorch_lightning.callbacks")}
    sys.modules.update({**parents, fake.__name__: fake})
    try:
        ckpt = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.0.8",
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(1.0)}},
                "state_dict": {**ref["state"], "loss.discriminator.main.0.weight": torch.zeros(2)}}
        torch.save(ckpt, tmp_path / "last.ckpt")
    finally:
        for name in (*parents, fake.__name__):
            del sys.modules[name]

    model = load_vqgan(tmp_path / "model.yaml", tmp_path / "last.ckpt")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.tokenize(ref["io"]["x_imagenet_norm"]), ref["io"]["tokens"])
    # A dict of the same shape as the yaml works too.
    assert load_vqgan(taming_yaml(ref["cfg"])).quantize.n_e == ref["cfg"]["vqgan"]["n_embed"]


def test_lightning_ckpt_with_pickled_objects(ref, tmp_path):
    """Some Lightning versions pickle objects, not just class references: a callback instance,
    AttributeDict hyper-parameters (a dict subclass), a list subclass, numpy scalars. None of
    their code may run; the state_dict must still come out."""
    import numpy as np

    fake = types.ModuleType("pytorch_lightning.fake_objects")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score, self.monitor = np.float64(0.5), "val/rec_loss"

        def __setstate__(self, state):
            raise AssertionError("Lightning code ran while loading")

    class AttributeDict(dict):
        pass

    class CallbackList(list):
        pass

    for cls in (ModelCheckpoint, AttributeDict, CallbackList):
        cls.__module__, cls.__qualname__ = fake.__name__, cls.__name__
        setattr(fake, cls.__name__, cls)
    sys.modules.update({"pytorch_lightning": types.ModuleType("pytorch_lightning"), fake.__name__: fake})
    try:
        torch.save({"callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.5)}},
                    "checkpoint_callback": ModelCheckpoint(),
                    "hyper_parameters": AttributeDict(embed_dim=4, ckpt_path=None),
                    "loggers": CallbackList(["tb"]),
                    "state_dict": ref["state"]}, tmp_path / "last.ckpt")
    finally:
        for name in ("pytorch_lightning", fake.__name__):
            del sys.modules[name]
    model = load_vqgan(taming_yaml(ref["cfg"]), tmp_path / "last.ckpt")
    assert torch.equal(model.tokenize(ref["io"]["x_imagenet_norm"]), ref["io"]["tokens"])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_arbitrary_pickles(ref, tmp_path):
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(taming_yaml(ref["cfg"])))
    torch.save({"state_dict": ref["state"], "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        load_vqgan(tmp_path / "model.yaml", tmp_path / "evil.ckpt")


def test_missing_files_say_where_they_go(tmp_path, ref):
    with pytest.raises(FileNotFoundError, match="model.yaml"):
        load_vqgan(tmp_path / "nope" / "model.yaml")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        load_vqgan(taming_yaml(ref["cfg"]), tmp_path / "last.ckpt")


def test_weights_of_another_config_are_a_clear_error(ref, tmp_path):
    torch.save({"state_dict": ref["state"]}, tmp_path / "last.ckpt")
    other = taming_yaml(ref["cfg"])
    other["model"]["params"]["n_embed"] *= 2
    with pytest.raises(ValueError, match=r"does not fit the VQGAN config .*quantize.embedding.weight is"):
        load_vqgan(other, tmp_path / "last.ckpt")


def test_full_size_keys(testdata):
    ref = json.loads((testdata / "vectors" / "reference_full_size_keys.json").read_text())
    real = ref["vqgan_imagenet_f16_1024"]
    with torch.device("meta"):
        model = VQModel(**real["config"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == real["keys"]
    assert model.quantize.n_e == 1024 and model.downsample_factor == 16
