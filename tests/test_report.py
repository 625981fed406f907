"""The paper's Table 1 with all four inpainting models: each trained a step by `model.train`
(tiny, CPU), evaluated by `model.evaluate` with one command line whatever the kind, and the runs
assembled by `model.report` into Markdown and CSV. A taming-format transformer (model.yaml +
Lightning last.ckpt) fills a second pre-training row."""
from __future__ import annotations

import csv

import pytest
import torch
import yaml

from model import evaluate, report
from model.train import get_args, train
from reference_models import net2net_yaml, randomize, tiny_vqgan
from test_evaluate import voc_root  # noqa: F401  (fixture)
from test_train_models import TINY, images, vqgan_files  # noqa: F401  (fixtures)
from test_vqgan_gpt import reference_gpt

KINDS = ("mae-vqgan", "mae", "beit", "vqgan-gpt")


@pytest.fixture(scope="module")
def imagenet_val(testdata, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for i, jpg in enumerate(sorted((testdata / "voc" / "JPEGImages").glob("*.jpg"))[:4]):
        (root / "val" / f"n0{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "val" / f"n0{i % 2}" / jpg.name).symlink_to(jpg)
    return root


def evaluate_all_tasks(ckpt, config, out, voc, imagenet, pretraining, *extra, tasks=("seg", "det", "color")):
    common = ["--checkpoint", str(ckpt), "--vqgan-config", str(config), "--device", "cpu",
              "--batch-size", "2", "--pretraining", pretraining, "--picture-rows", "1", *extra]
    if "seg" in tasks:
        assert evaluate.main([*common, "--task", "segmentation", "--data", str(voc), "--splits", "derived",
                              "--fold", "0", "--episodes", "2", "--out", str(out / "seg")]) == 0
    if "det" in tasks:
        assert evaluate.main([*common, "--task", "detection", "--data", str(voc), "--protocol", "clean",
                              "--area-filter", "none", "--episodes", "2", "--out", str(out / "det")]) == 0
    if "color" in tasks:
        assert evaluate.main([*common, "--task", "colorization", "--data", str(imagenet), "--episodes", "2",
                              "--out", str(out / "color")]) == 0


@pytest.fixture(scope="module")
def trained(images, vqgan_files, tmp_path_factory):  # noqa: F811
    """kind -> a checkpoint of that kind, one training step by model.train."""
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        train(get_args([str(images), *TINY, *vqgan_files, "--model", kind, "--batch-size", "4",
                        "--epochs", "1", "--max-steps", "1", "--out", str(folder)]))
        out[kind] = folder / "checkpoint-last.pth"
    return out


def test_four_models_table(trained, vqgan_files, voc_root, imagenet_val, tmp_path, capsys):  # noqa: F811
    runs = []
    for kind in KINDS:
        evaluate_all_tasks(trained[kind], vqgan_files[1], tmp_path / "eval" / kind, voc_root,
                           imagenet_val, "CVF")
        runs.append(tmp_path / "eval" / kind)
    # taming's own files: a Net2NetTransformer model.yaml and a Lightning last.ckpt
    ref = reference_gpt()
    (tmp_path / "taming").mkdir()
    (tmp_path / "taming" / "model.yaml").write_text(yaml.safe_dump(net2net_yaml()))
    first = tiny_vqgan()
    randomize(first.quantize, 5, 1.0)
    torch.save({"state_dict": {**{"transformer." + k: v for k, v in ref.state_dict().items()},
                               **{"first_stage_model." + k: v for k, v in first.state_dict().items()}}},
               tmp_path / "taming" / "last.ckpt")
    evaluate_all_tasks(tmp_path / "taming" / "last.ckpt", tmp_path / "taming" / "model.yaml",
                       tmp_path / "eval" / "taming", voc_root, imagenet_val, "ImageNet", tasks=("seg",))
    runs.append(tmp_path / "eval" / "taming")
    capsys.readouterr()

    assert report.main([*map(str, runs), "--out", str(tmp_path / "table")]) == 0
    md = (tmp_path / "table" / "table.md").read_text()
    rows = list(csv.DictReader((tmp_path / "table" / "table.csv").open()))
    assert [(r["model"], r["pretraining"]) for r in rows] == [
        ("MAE-VQGAN", "CVF"), ("MAE", "CVF"), ("BEiT", "CVF"), ("VQGAN", "CVF"), ("VQGAN", "ImageNet")]
    for r in rows[:4]:
        assert 0 <= float(r["seg_fold0"]) <= 1 and float(r["color_mse"]) > 0
        assert 0 <= float(r["det_fold0"]) <= 1                     # the fixture's aeroplanes: fold 0
        assert r["seg_fold1"] == r["det_fold2"] == r["color_lpips"] == ""
    assert 0 <= float(rows[4]["seg_fold0"]) <= 1 and rows[4]["color_mse"] == ""     # taming's: seg only
    assert md.splitlines()[0].startswith("| Model | Pre-training | Seg. 0 |") and "| BEiT | CVF |" in md
    # the results say which model ran
    import json
    res = json.loads((tmp_path / "eval" / "beit" / "seg" / "results.json").read_text())
    assert res["model_kind"] == "beit" and res["pretraining"] == "CVF" and res["model"].startswith("BEiT")

    # a cell filled twice is refused, naming both runs
    assert report.main([str(runs[0]), str(runs[0]), "--out", str(tmp_path / "t2")]) == 2
    assert "two runs for MAE-VQGAN / CVF" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a folder that is not there: argparse's refusal
        report.main([str(tmp_path / "nothing-here")])
    assert refused.value.code == 2 and "no such folder" in capsys.readouterr().err


def data_url(colour):
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("kind", KINDS)
def test_demo_runs_every_kind(trained, vqgan_files, kind):  # noqa: F811
    from model import demo
    from model.inpainters import LABELS

    model = demo.load_model(trained[kind], vqgan_files[1])
    page = demo.Demo(model, str(trained[kind]), vqgan_files[1], torch.device("cpu"), [])
    assert page.info()["model"].startswith(LABELS[kind].replace("MAE", "pixel MAE") if kind == "mae"
                                           else LABELS[kind])
    out = page.run({"pairs": [[data_url((200, 0, 0)), data_url((255, 255, 255))]],
                    "queries": [data_url((0, 0, 200)), data_url((0, 200, 0))], "layout": "horizontal"})
    assert len(out["results"]) == 2 and all(v.startswith("data:image/png") for v in out["results"][0].values())


@pytest.mark.parametrize("kind", ["vqgan-gpt"])   # BEiT paints as MAE-VQGAN does; the transformer differs
def test_prompt_study_takes_the_transformer(trained, vqgan_files, voc_root, tmp_path, kind):  # noqa: F811
    assert evaluate.main(["--checkpoint", str(trained[kind]), "--vqgan-config", vqgan_files[1],
                          "--device", "cpu", "--task", "segmentation", "--data", str(voc_root),
                          "--splits", "derived", "--fold", "0", "--episodes", "1", "--picture-rows", "0",
                          "--layout", "horizontal", "vertical", "--mask-style", "bw", "purple",
                          "--out", str(tmp_path)]) == 0
    study = (tmp_path / "study.md").read_text()
    assert "| mask style | horizontal | vertical |" in study and "| purple |" in study
