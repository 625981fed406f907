"""Every bad file or argument gets one `error:` line and a non-zero exit, never a traceback:
checkpoints (random bytes, a malicious pickle), VQGAN configs (malformed, empty), episode
counts, and a rebuild index of the wrong types."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model import evaluate
from pipeline import rebuild


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert [line for line in lines if "error:" in line], err
    return err


def _evaluate(tmp_path, checkpoint, config, *extra):
    return evaluate.main(["--task", "synthetic", "--checkpoint", str(checkpoint),
                          "--vqgan-config", str(config), "--device", "cpu",
                          "--out", str(tmp_path / "out"), *extra])


@pytest.fixture
def model_yaml(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("model:\n  params:\n    n_embed: 8\n    embed_dim: 4\n"
                    "    ddconfig: {ch: 8, ch_mult: [1], num_res_blocks: 1, attn_resolutions: [],"
                    " in_channels: 3, out_ch: 3, resolution: 16, z_channels: 4, double_z: false,"
                    " dropout: 0.0}\n")
    return path


def test_random_bytes_checkpoint_is_one_error_line_and_exit_2(tmp_path, model_yaml, capsys):
    checkpoint = tmp_path / "random.pth"
    checkpoint.write_bytes(os.urandom(4096))
    assert _evaluate(tmp_path, checkpoint, model_yaml) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "not a readable PyTorch checkpoint" in err


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_without_advising_the_unsafe_load(tmp_path, model_yaml, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode()}, checkpoint)
    assert _evaluate(tmp_path, checkpoint, model_yaml) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "refused" in err and "system" in err
    assert "weights_only=False" not in err and "weights_only" not in err
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("text", ["model: [unclosed\n  params: {", "", "just a string\n"])
def test_malformed_or_empty_vqgan_yaml_is_one_error_line(tmp_path, capsys, text):
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": {"vae.quantize.embedding.weight": torch.zeros(8, 4)}}, checkpoint)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert _evaluate(tmp_path, checkpoint, config) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "VQGAN config" in err


@pytest.mark.parametrize("episodes", ["0", "-3", "many"])
def test_episodes_below_one_are_refused(tmp_path, model_yaml, capsys, episodes):
    with pytest.raises(SystemExit) as exit_:
        _evaluate(tmp_path, tmp_path / "none.pth", model_yaml, "--episodes", episodes)
    assert exit_.value.code == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "--episodes" in err


def test_rebuild_refuses_a_parquet_index_of_wrong_types(tmp_path, capsys):
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"paper_id": pa.array([2101, 2102], pa.int64()),
                             "img_name": ["a.png", "b.png"]}), index)
    with pytest.raises(SystemExit) as exit_:
        rebuild.main(["--index", str(index), "--split", "val", "--out", str(tmp_path / "out"),
                      "--root", str(tmp_path / "data")])
    assert exit_.value.code == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "column paper_id is int64, expected string" in err
