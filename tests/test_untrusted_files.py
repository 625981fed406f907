"""Files from someone else: a shared classifier runs no code and is read only from under
classifier/; a tampered manifest makes verify read nothing outside it and never pass; a bad
time limit loses no figures; a header-only index is an error; a text file given as a
checkpoint or VQGAN config stops the command before it trains or serves."""
from __future__ import annotations

import functools
import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import classify, extract, rebuild, store, verify


def run(main, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stderr, stdout) of `main(argv)`."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err, out


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]


# --- a classifier from someone else ------------------------------------------------------------

class RunsCode:
    """Unpickling this writes `marker`: what a hostile model.joblib would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle(folder, marker) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(pickle.dumps(RunsCode(marker)))


@functools.lru_cache(maxsize=1)
def fitted_objects():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((120, 6))
    y = (x[:, 0] + 0.2 * rng.random(120) > 0.6).astype(int)
    return x, y, {
        "logreg": classify.make_head("logreg").fit(x, y),
        "hgb": classify.make_head("hgb").fit(x, y),
        "sigmoid": CalibratedClassifierCV(HistGradientBoostingClassifier(max_iter=5), cv=3).fit(x, y),
        "isotonic": CalibratedClassifierCV(LogisticRegression(), method="isotonic", cv=3).fit(x, y),
        "iso": IsotonicRegression(out_of_bounds="clip").fit(x[:, 0], y),
        "platt": classify.fit_calibrator(x[:, 0], y),
    }


def test_classifier_round_trips_through_skops_for_the_estimators_it_uses(tmp_path):
    x, y, objects = fitted_objects()
    card = {"version": "clf-a", "threshold": 0.4, "cv": {"folds": 5, "by_source": {}}, "backbone": None}
    folder = classify.classifier_dir(tmp_path, "clf-a")
    folder.mkdir(parents=True)
    path = classify.save_classifier(folder, {"head": objects["logreg"], "calibrator": objects["platt"],
                                             "card": card, "others": objects, "mean": x.mean(0)})
    assert path.name == "model.skops" and not (folder / "model.joblib").exists()
    loaded = classify.load_classifier(tmp_path, "clf-a")
    assert loaded["card"] == card and np.array_equal(loaded["mean"], x.mean(0))
    for name, est in objects.items():
        if name == "iso":
            assert np.array_equal(loaded["others"][name].predict(x[:, 0]), est.predict(x[:, 0]))
        else:
            features = x[:, :1] if name == "platt" else x
            assert np.array_equal(loaded["others"][name].predict_proba(features), est.predict_proba(features)), name


def test_classifier_pickle_is_refused_without_trust_pickle_and_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    hostile_pickle(tmp_path / "data" / "classifier" / "clf-shared", marker)
    (tmp_path / "data" / "classifier" / "LATEST").write_text("clf-shared\n")
    with pytest.raises(classify.ClassifierError, match="--trust-pickle"):
        classify.load_classifier(tmp_path / "data")
    code, err, out = run(classify.main, ["score", "--root", str(tmp_path / "data")], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "runs code" in err
    assert not marker.exists()


def test_an_old_pickle_loads_with_trust_pickle(tmp_path):
    import joblib

    _, _, objects = fitted_objects()
    folder = tmp_path / "classifier" / "clf-old"
    folder.mkdir(parents=True)
    joblib.dump({"head": objects["logreg"], "calibrator": objects["platt"], "card": {"version": "clf-old"}},
                folder / "model.joblib")
    assert classify.load_classifier(tmp_path, "clf-old", trust_pickle=True)["card"] == {"version": "clf-old"}


@pytest.mark.parametrize("how", ["--version ../..", "--version ../../elsewhere", "LATEST", "link"])
def test_classifier_outside_classifier_folder_is_refused(tmp_path, capsys, how):
    root, marker = tmp_path / "data", tmp_path / "code-ran"
    (root / "classifier").mkdir(parents=True)
    hostile_pickle(tmp_path / "elsewhere", marker)
    hostile_pickle(tmp_path, marker)  # what --version ../.. names
    argv = ["score", "--root", str(root), "--trust-pickle"]  # even trusting pickles: not from outside
    if how.startswith("--version"):
        argv += how.split()
    elif how == "LATEST":
        (root / "classifier" / "LATEST").write_text("../../elsewhere\n")
    else:
        (root / "classifier" / "clf-link").symlink_to(tmp_path / "elsewhere")
        argv += ["--version", "clf-link"]
    code, err, out = run(classify.main, argv, capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "leaves" in err, err
    assert not marker.exists()


class NotTrusted:
    def __init__(self):
        self.value = 1


def test_skops_file_with_an_untrusted_type_is_refused(tmp_path):
    folder = tmp_path / "classifier" / "clf-x"
    folder.mkdir(parents=True)
    classify.save_classifier(folder, {"head": NotTrusted(), "calibrator": None, "card": {}})
    with pytest.raises(classify.ClassifierError, match="NotTrusted"):
        classify.load_classifier(tmp_path, "clf-x")
    (folder / "model.skops").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(classify.ClassifierError, match="not a readable classifier"):
        classify.load_classifier(tmp_path, "clf-x")


# --- a manifest from someone else ----------------------------------------------------------------

def png_bytes(color=(10, 200, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write_manifest(folder, rows: dict[str, list[dict]] | None = None, extra: list[dict] = (),
                   table=None) -> str:
    """A manifest folder: train/val Parquet files of `rows` and a croissant.json listing them
    (with their true sha256) and the `extra` entries."""
    folder.mkdir(parents=True, exist_ok=True)
    distribution = []
    for split in ("train", "val"):
        if split == "train" and table is not None:
            t = table
        else:
            t = pa.Table.from_pylist((rows or {}).get(split, []), schema=ROW_SCHEMA)
        pq.write_table(t, folder / f"{split}.parquet")
        distribution.append({"@type": "cr:FileObject", "name": f"{split}.parquet", "contentUrl": f"{split}.parquet",
                             "sha256": store.sha256_file(folder / f"{split}.parquet")})
    (folder / "croissant.json").write_text(json.dumps({"name": "m", "distribution": distribution + list(extra)}))
    return str(folder)


ROW_SCHEMA = pa.schema([("paper_id", pa.string()), ("img_name", pa.string()), ("sha256", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("image_path", pa.string()),
                        ("phash", pa.string())])


def test_verify_refuses_a_content_url_outside_the_manifest_even_with_its_sha256(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    outside = {"@type": "cr:FileObject", "name": "passwd", "contentUrl": "../secret.txt",
               "sha256": store.sha256_file(secret)}
    manifest = write_manifest(tmp_path / "m", extra=[outside])
    code, err, out = run(verify.main, [manifest], capsys)
    assert code == 1 and "manifest file ../secret.txt: outside the manifest folder" in out and "OK" not in out
    assert err.count("\n") == 1 and err.startswith("error: ") and "1 manifest files" in err, err
    report = verify.verify(manifest)
    assert report["manifest_problems"] == [{"file": "../secret.txt",
                                            "problem": "outside the manifest folder: refused, not read"}]
    assert not report["ok_overall"]


def test_verify_refuses_a_link_out_of_the_manifest_and_absolute_paths(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.txt").symlink_to(secret)
    entries = [{"@type": "cr:FileObject", "name": n, "contentUrl": n, "sha256": store.sha256_file(secret)}
               for n in ("notes.txt", str(secret), "file:///" + str(secret), "sub/../../secret.txt")]
    report = verify.verify(write_manifest(folder, extra=entries))
    assert [p["problem"] for p in report["manifest_problems"]] == \
        ["outside the manifest folder: refused, not read"] * 4
    assert not report["ok_overall"]


def test_verify_reads_no_image_outside_the_image_folder(tmp_path, capsys):
    data = png_bytes()
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "outside.png").write_bytes(data)
    (images / "2101.00001").mkdir()
    (images / "2101.00001" / "link.png").symlink_to(tmp_path / "outside.png")
    row = {"paper_id": "2101.00001", "sha256": store.sha256_bytes(data), "width": 8, "height": 6, "phash": None}
    rows = {"train": [{**row, "img_name": "a.png", "image_path": "../outside.png"},
                      {**row, "img_name": "../../outside.png", "image_path": ""},
                      {**row, "img_name": "link.png", "image_path": "2101.00001/link.png"},
                      {**row, "paper_id": "..", "img_name": "outside.png", "image_path": ""}]}
    manifest = write_manifest(tmp_path / "m", rows)
    report = verify.verify(manifest, images)
    assert report["ok"] == 0 and len(report["image_problems"]) == 4
    assert all(p["problem"].startswith("its path leads outside the image folder") for p in report["image_problems"])
    code, err, out = run(verify.main, [manifest, "--images", str(images)], capsys)
    assert code == 1


def test_verify_reports_rows_of_wrong_types_and_unreadable_parquet(tmp_path, capsys):
    table = pa.table({"paper_id": [1, 2], "img_name": ["a.png", None], "sha256": ["0" * 64, "1"],
                      "width": ["wide", "8"], "height": [6, 6], "image_path": [3, 4]})
    manifest = write_manifest(tmp_path / "m", table=table)
    report = verify.verify(manifest, tmp_path)
    assert report["figures"] == 2 and report["ok"] == 0 and not report["ok_overall"]
    assert all("manifest row of wrong types" in p["problem"] for p in report["image_problems"])
    code, err, out = run(verify.main, [manifest, "--images", str(tmp_path)], capsys)
    assert code == 1 and error_lines(err) == [f"error: {manifest} did not verify: 2 images"]
    # a train.parquet that is not Parquet (croissant.json lists its true sha256)
    (tmp_path / "m" / "train.parquet").write_bytes(b"PAR1 nothing")
    meta = json.loads((tmp_path / "m" / "croissant.json").read_text())
    meta["distribution"][0]["sha256"] = store.sha256_file(tmp_path / "m" / "train.parquet")
    (tmp_path / "m" / "croissant.json").write_text(json.dumps(meta))
    code, err, out = run(verify.main, [manifest, "--images", str(tmp_path)], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "train.parquet" in err


def test_verify_of_an_empty_folder_or_a_deep_croissant_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err, out = run(verify.main, [str(tmp_path / "empty")], capsys)
    assert code == 2 and error_lines(err) == [err.strip()] and "no croissant.json" in err
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "croissant.json").write_text('{"distribution": ' + "[" * 50_000 + "]" * 50_000 + "}")
    code, err, out = run(verify.main, [str(tmp_path / "deep")], capsys)
    assert code == 1 and error_lines(err) == [err.strip()]


def test_manifest_paths_stay_inside_on_other_filesystems():
    import fsspec

    fs = fsspec.filesystem("memory")
    assert verify.manifest_path(fs, "/m", "train.parquet") == "/m/train.parquet"
    for bad in ("../x", "a/../../x", "/etc/passwd", "s3://b/x", "", None, 3):
        assert verify.manifest_path(fs, "/m", bad) is None, bad


# --- arguments that would lose work or do nothing -------------------------------------------------

def test_negative_timeout_is_refused_before_a_done_shard_is_redone(tmp_path, capsys):
    from test_extract import png, tar_gz, write_papers

    write_papers(tmp_path, "2021-05", {"2105.00001": tar_gz({"a.png": png((1, 2, 3))})})
    extract.extract_shard("2021-05", tmp_path, progress=False)
    before = (tmp_path / "figures" / "2021-05.parquet").read_bytes()
    code, err, out = run(extract.main, ["--root", str(tmp_path), "--timeout", "-1", "--force"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "--timeout" in err
    assert (tmp_path / "figures" / "2021-05.parquet").read_bytes() == before
    assert store.shard_done(tmp_path / "figures", "2021-05")
    with pytest.raises(ValueError, match="above 0"):
        extract.render_options(timeout_s=-1)


def test_rebuild_of_a_header_only_index_is_an_error(tmp_path, capsys):
    index = tmp_path / "df_val.csv"
    index.write_text(",paper_id,img_name\n")
    code, err, out = run(rebuild.main, ["--index", str(index), "--split", "val", "--out", str(tmp_path / "cvf"),
                                   "--root", str(tmp_path / "data")], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "lists no images" in err
    assert not (tmp_path / "cvf").exists()


def test_text_file_as_init_checkpoint_or_vqgan_config_stops_before_work(tmp_path, capsys):
    from model import demo, train
    from test_extract import photo

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        (images / f"{i}.png").write_bytes(photo(i, (40, 40)))
    run_dir = tmp_path / "run"
    code, err, out = run(train.main, [str(images), "--target", "pixels", "--input-size", "32", "--embed-dim", "16",
                                 "--depth", "1", "--num-heads", "2", "--decoder-embed-dim", "16",
                                 "--decoder-depth", "1", "--decoder-num-heads", "2", "--batch-size", "1",
                                 "--num-workers", "0", "--device", "cpu", "--no-progress", "--init", str(text),
                                 "--out", str(run_dir)], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "not a readable PyTorch checkpoint" in err
    assert not list(run_dir.glob("checkpoint-*.pth"))
    code, err, out = run(demo.main, ["--checkpoint", str(text), "--vqgan-config", str(text), "--port", "0"], capsys)
    assert code == 2 and len(error_lines(err)) == 1 and "--vqgan-config" in err
    assert "cvf demo on" not in out
