"""The bundled photo/graphic model: real photos are photos, drawn plots and diagrams are not; its
training recipe runs and writes weights that load; weights of other statistics are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.photo_model import STAT_NAMES, PhotoModel, panel_stats, train, working_copy
from test_features import draw_figure

skdata = pytest.importorskip("skimage.data")


def prob(model: PhotoModel, image: Image.Image) -> float:
    return float(model.prob(panel_stats(working_copy(image)))[0])


def test_bundled_model_tells_photos_from_graphics(testdata):
    model = PhotoModel.load()
    assert model.card["heldout_roc_auc"] > 0.95
    photos = [Image.open(p) for p in sorted((testdata / "voc" / "JPEGImages").glob("*.jpg"))[:6]]
    photos += [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee()).convert("L")]
    assert all(prob(model, im) > 0.8 for im in photos), [prob(model, im) for im in photos]
    rng = np.random.default_rng(5)
    graphics = [draw_figure(kind, rng) for kind in ("plot", "plot_grid", "diagram") for _ in range(3)]
    assert all(prob(model, im) < 0.2 for im in graphics), [prob(model, im) for im in graphics]


def test_training_recipe_writes_weights_that_load(tmp_path):
    out = tmp_path / "photo_model.json"
    card = train(n=24, seed=3, out=out)
    assert card["train_panels"] == 24 and card["heldout_accuracy"] > 0.8
    data = json.loads(out.read_text())
    assert data["stat_names"] == STAT_NAMES and len(data["coef"]) == len(STAT_NAMES)
    model = PhotoModel.load(out)
    assert prob(model, Image.fromarray(skdata.chelsea())) > 0.5
    data["stat_names"] = STAT_NAMES[:-1]
    out.write_text(json.dumps(data))
    PhotoModel.load.cache_clear()
    with pytest.raises(ValueError, match="retrain"):
        PhotoModel.load(out)


def test_tiny_and_flat_panels_do_not_crash():
    assert panel_stats(np.zeros((2, 2, 3), np.uint8)).shape == (len(STAT_NAMES),)
    assert np.isfinite(panel_stats(np.full((50, 80, 3), 255, np.uint8))).all()


def test_cli_refuses_bad_values_with_one_line(capsys, tmp_path):
    from pipeline.photo_model import main

    for argv in (["train", "--panels", "3"], ["train", "--voc", str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_working_copy_of_a_large_jpeg_is_decoded_small_and_matches_the_full_decode():
    import io

    photo = Image.fromarray(skdata.astronaut()).resize((1536, 1536))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    work = working_copy(Image.open(io.BytesIO(buf.getvalue())))  # decoded at a reduced scale
    full = Image.open(io.BytesIO(buf.getvalue()))
    full.load()  # decoded at full size: the draft no longer applies
    reference = working_copy(full)
    assert work.shape == reference.shape == (512, 512, 3) and work.dtype == np.uint8
    assert np.abs(work.astype(int) - reference).mean() < 3  # the same picture, filtered a little differently
    assert np.allclose(panel_stats(work), panel_stats(reference), atol=0.05)
