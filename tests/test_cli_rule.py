"""The CLI rule, for every command of pipeline/, labeling/, model/ and flows/: a bad invocation
exits non-zero (2 for a bad value) with one `error:` line (argparse's `prog: error: ...` after its
usage counts as that line) and never a traceback, before any work.

Most cases call `main(argv)` in this process; a few run `python -m ...` as a user would."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOWHERE = "/dev/null/x"  # under a file: no folder can ever be made there

# (module, argv, exit status[, what the error line says]); `{name}` is replaced by the path of the
# fixture file or folder `name`. Without the last item the error line must name the argv's last --flag,
# so that a case passes only when it is refused for the value it is about.
CASES = [
    # pipeline.classify
    ("pipeline.classify", ["train", "--batch-size", "0"], 2),
    ("pipeline.classify", ["train", "--folds", "0"], 2),
    ("pipeline.classify", ["train", "--root", "{root}", "--version", "../../escape"], 2, "leaves"),
    ("pipeline.classify", ["score", "--batch-size", "0"], 2),
    ("pipeline.classify", ["score", "--batch-size", "many"], 2),
    ("pipeline.classify", ["score", "--workers", "-1"], 2),
    ("pipeline.classify", ["score", "--root", "{root}", "--version", "../.."], 2, "leaves"),
    ("pipeline.classify", ["score", "--root", "{pickled_root}"], 2, "--trust-pickle"),
    ("pipeline.classify", ["score", "--root", "{scoring_root}"], 2, "nothing to score"),
    ("pipeline.classify", ["score", "--root", "{root}", "--shard", "2021-13"], 2, "not a month shard"),
    # pipeline.cli (the `cvf` command), pipeline.confined (the renderer's child), pipeline.contract
    ("pipeline.cli", ["no-such-job"], 2, "no job"),
    ("pipeline.cli", ["crawl", "--max-papers", "-5"], 2),
    ("pipeline.confined", ["--serve", "--memory-mb", "0"], 2),
    ("pipeline.contract", ["--out", "x"], 2, "unrecognized arguments"),
    # pipeline.contamination
    ("pipeline.contamination", ["--against", "{empty}", "--root", "{root}"], 2, "no image"),
    ("pipeline.contamination", ["--against", "{missing}", "--root", "{root}"], 2, "not"),
    ("pipeline.contamination", ["--against", "{images}", "--workers", "-1"], 2),
    ("pipeline.contamination", ["--against", "{images}", "--root", NOWHERE], 2),
    # pipeline.photo_model
    ("pipeline.photo_model", ["train", "--panels", "5"], 2, "--panels"),
    ("pipeline.photo_model", ["train", "--voc", "{missing}"], 2),
    ("pipeline.photo_model", ["train", "--out", NOWHERE + "/w.json"], 2),
    # pipeline.extract
    ("pipeline.extract", ["--root", "{root}", "--timeout", "-1", "--force"], 2, "--timeout"),
    ("pipeline.extract", ["--root", "{root}", "--timeout", "0"], 2),
    ("pipeline.extract", ["--root", "{root}", "--timeout", "nan"], 2),
    ("pipeline.extract", ["--root", "{root}", "--contact-sheet", "-3"], 2),
    ("pipeline.extract", ["--root", NOWHERE], 2),
    ("pipeline.extract", ["--root", "{root}", "--shards", "2021-13"], 2, "not a month shard"),
    ("pipeline.extract", ["--root", "{root}", "--formats", "exe"], 2, "exe"),
    # pipeline.verify
    ("pipeline.verify", ["{empty}"], 2, "no croissant.json"),
    ("pipeline.verify", ["{missing}"], 2, "not found"),
    ("pipeline.verify", ["{deep_manifest}"], 1, "not JSON"),
    ("pipeline.verify", ["{empty}", "--images", NOWHERE], 2),
    ("pipeline.verify", ["{empty}", "--split", "test"], 2),
    # pipeline.render
    ("pipeline.render", [], 2, "give a figure file"),
    ("pipeline.render", ["{missing}"], 2, "no such file"),
    ("pipeline.render", ["{text}", "-o", NOWHERE + "/a.png"], 2, "--out"),
    # pipeline.licenses
    ("pipeline.licenses", ["--timeout", "0"], 2),
    ("pipeline.licenses", ["--retries", "-1"], 2),
    ("pipeline.licenses", ["--delay", "-1"], 2),
    ("pipeline.licenses", ["--root", NOWHERE], 2),
    # pipeline.pdffigures
    ("pipeline.pdffigures", ["{missing}", "--out", "{empty}"], 2, "no such file"),
    ("pipeline.pdffigures", ["{text}", "--out", NOWHERE], 2),
    ("pipeline.pdffigures", ["{text}", "--out", "{empty}", "--dpi", "0"], 2),
    # pipeline.publish
    ("pipeline.publish", ["--name", "cvf-x", "--root", "{root}", "--samples", "-1"], 2),
    ("pipeline.publish", ["--name", "cvf-x", "--root", "{root}", "--out", NOWHERE], 2),
    ("pipeline.publish", ["--name", "cvf-x", "--root", "{missing}"], 2),
    ("pipeline.publish", ["--name", "../escape", "--root", "{root}", "--out", "{empty}"], 2, "bad manifest name"),
    # pipeline.rebuild
    ("pipeline.rebuild", ["--index", "{header_only}", "--split", "val", "--out", "{empty}", "--root", "{root}"], 2, "lists no images"),
    ("pipeline.rebuild", ["--index", "{missing}", "--split", "val", "--out", "{empty}"], 2, "--index"),
    ("pipeline.rebuild", ["--index", "{index}", "--split", "../val", "--out", "{empty}"], 2, "--split"),
    ("pipeline.rebuild", ["--index", "{index}", "--split", "val", "--out", NOWHERE], 2),
    ("pipeline.rebuild", ["--index", "{index}", "--split", "val", "--out", "{empty}", "--delay", "-1"], 2),
    ("pipeline.rebuild", ["--index", "{index}", "--split", "val", "--out", "{empty}", "--eprints", "{missing}"], 2),
    # pipeline.crawl
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--max-papers", "-5"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--max-papers", "0"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--root", NOWHERE], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--data", NOWHERE], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--timeout", "0"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--retries", "-1"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--max-attempts", "0"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--block-after", "-1"], 2),
    ("pipeline.crawl", ["--from", "2021-01", "--to", "2021-01", "--delay", "-3"], 2),
    ("pipeline.crawl", ["--from", "2021-13", "--to", "2021-01"], 2, "not a month shard"),
    # pipeline.bulk
    ("pipeline.bulk", ["--metadata", "{missing}", "--from", "2021-01", "--to", "2021-01"], 2, "--metadata"),
    ("pipeline.bulk", ["--metadata", "{text}", "--from", "2021-01", "--to", "2021-01", "--bandwidth", "0"], 2),
    ("pipeline.bulk", ["--metadata", "{text}", "--from", "2021-01", "--to", "2021-01", "--root", NOWHERE], 2),
    # pipeline.replay
    ("pipeline.replay", ["serve", "--port", "99999"], 2),
    ("pipeline.replay", ["serve", "--port", "-1"], 2),
    ("pipeline.replay", ["serve", "--eprints-dir", "{missing}"], 2),
    ("pipeline.replay", ["generate", "--out", NOWHERE], 2),
    ("pipeline.replay", ["generate", "--out", "{empty}", "--papers", "0"], 2),
    ("pipeline.replay", ["generate", "--out", "{empty}", "--months", "2021-13"], 2),
    # pipeline.filter
    ("pipeline.filter", ["--threshold", "2"], 2),
    ("pipeline.filter", ["--threshold", "-0.1"], 2),
    ("pipeline.filter", ["--target-count", "0"], 2),
    ("pipeline.filter", ["--root", NOWHERE, "--threshold", "0.5"], 2, "--root"),
    # pipeline.pdffigures_eval
    ("pipeline.pdffigures_eval", ["--testdata", "{missing}"], 2),
    # labeling
    ("labeling.demo", ["--count", "0"], 2),
    ("labeling.demo", ["--share", "1.5"], 2),
    ("labeling.demo", ["--port", "99999"], 2),
    ("labeling.demo", ["--root", NOWHERE], 2),
    ("labeling.push", ["--count", "-1"], 2),
    ("labeling.push", ["--threshold", "2"], 2),
    ("labeling.push", ["--root", NOWHERE], 2),
    ("labeling.pull", ["--root", NOWHERE], 2),
    ("labeling.serve", ["--port", "99999"], 2),
    ("labeling.serve", ["--port", "-1"], 2),
    ("labeling.serve", ["--root", NOWHERE], 2),
    # model.demo
    ("model.demo", ["--checkpoint", "{missing}"], 2),
    ("model.demo", ["--checkpoint", "{text}", "--port", "99999"], 2),
    ("model.demo", ["--checkpoint", "{text}", "--size", "0"], 2),
    ("model.demo", ["--checkpoint", "{text}"], 2, "notes.txt"),
    ("model.demo", ["--checkpoint", "{text}", "--vqgan-config", "{text}"], 2),
    ("model.demo", ["--checkpoint", "{text}", "--examples", "{missing}"], 2),
    # model.data
    ("model.data", ["pack", "{missing}", "--out", "{empty}"], 2, "no such manifest"),
    ("model.data", ["pack", "{empty}", "--out", NOWHERE], 2),
    ("model.data", ["pack", "{empty}", "--out", "{empty}", "--shard-size", "0"], 2),
    ("model.data", ["pack", "{empty}", "--out", "{empty}", "--jpeg-quality", "0"], 2),
    ("model.data", ["pack", "{empty}", "--out", "{empty}", "--max-side", "-1"], 2),
    # model.evaluate
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{missing}"], 2),
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{text}", "--class-label", "-1"], 2),
    # model.report
    ("model.report", ["{missing}"], 2, "RUN_DIR"),
    ("model.report", ["{empty}", "--out", NOWHERE], 2),
    ("model.report", ["{empty}"], 2, "results.json"),
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{text}", "--batch-size", "0"], 2),
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{text}", "--out", NOWHERE], 2),
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{text}", "--episodes", "0"], 2),
    ("model.evaluate", ["--task", "segmentation", "--checkpoint", "{text}", "--shots", "0"], 2),
    ("model.evaluate", ["--task", "synthetic", "--checkpoint", "{text}", "--device", "cpu",
                        "--out", "{empty}"], 2, "not a readable PyTorch checkpoint"),
    # model.train
    ("model.train", ["{images}", "--epochs", "-1"], 2),
    ("model.train", ["{images}", "--mask-ratio", "1.5"], 2),
    ("model.train", ["{images}", "--mask-ratio", "0"], 2),
    ("model.train", ["{images}", "--batch-size", "0"], 2),
    ("model.train", ["{images}", "--accum-iter", "0"], 2),
    ("model.train", ["{images}", "--out", NOWHERE], 2),
    ("model.train", ["{images}", "--init", "{missing}"], 2),
    ("model.train", ["{images}", "--lr", "-1"], 2),
    ("model.train", ["{images}", "--target", "pixels", "--input-size", "32", "--embed-dim", "16", "--depth", "1",
                     "--num-heads", "2", "--decoder-embed-dim", "16", "--decoder-depth", "1",
                     "--decoder-num-heads", "2", "--batch-size", "1", "--num-workers", "0", "--device", "cpu",
                     "--no-progress", "--init", "{text}", "--out", "{run}"], 2, "not a readable PyTorch checkpoint"),
    # model.voc
    ("model.voc", ["--data", "{missing}"], 2),
    ("model.voc", ["--data", "{empty}", "--write-splits", NOWHERE], 2),
    # flows.extract
    ("flows.extract", ["--root", "{root}", "--timeout", "-1"], 2),
    ("flows.extract", ["--root", "{root}", "--workers", "0"], 2),
    ("flows.extract", ["--root", "{root}", "--contact-sheet", "-3"], 2),
    ("flows.extract", ["--root", NOWHERE], 2),
]

# Run as a user would: `python -m ...` in a fresh process (stderr and status as the shell sees them).
SUBPROCESS = {("pipeline.verify", 0), ("pipeline.crawl", 0), ("model.train", 0), ("labeling.serve", 0),
              ("model.demo", 4)}


# Nothing here may reach a network: a case that got past its checks would find no server.
OFFLINE = {"CVF_ARXIV_API_URL": "http://127.0.0.1:9/api/query", "CVF_ARXIV_EPRINT_URL": "http://127.0.0.1:9/e-print/{id}",
           "CVF_ARXIV_PDF_URL": "http://127.0.0.1:9/pdf/{id}", "CVF_ARXIV_OAI_URL": "http://127.0.0.1:9/oai",
           "CVF_ARXIV_DELAY": "0", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "CVF_LABEL_STUDIO_URL": "http://127.0.0.1:9"}


class Evil:
    """Unpickling this runs code: it writes the file `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code ran",))


def make_fixtures(base: Path) -> dict[str, str]:
    from test_extract import photo, tar_gz, write_papers

    paths = {name: base / name for name in ("root", "pickled_root", "empty", "missing", "images",
                                            "deep_manifest", "run")}
    for name in ("root", "empty", "images", "deep_manifest"):
        paths[name].mkdir()
    write_papers(paths["root"], "2021-01", {"2101.00001": tar_gz({"a.png": photo(0, (40, 40))})})
    (paths["root"] / "figures").mkdir()
    paths["text"] = base / "notes.txt"
    paths["text"].write_text("not a checkpoint, not a model.yaml, not a PDF\n")
    paths["header_only"] = base / "df_val.csv"
    paths["header_only"].write_text(",paper_id,img_name\n")
    paths["index"] = base / "df_train.csv"
    paths["index"].write_text(",paper_id,img_name\n0,2101.00001,fig.png\n")
    (paths["deep_manifest"] / "croissant.json").write_text("[" * 100_000 + "]" * 100_000)
    for i in range(2):
        (paths["images"] / f"{i}.png").write_bytes(photo(i, (40, 40)))
    # a classifier saved as a pickle whose unpickling would run code, named by classifier/LATEST
    folder = paths["pickled_root"] / "classifier" / "clf-old"
    folder.mkdir(parents=True)
    import pickle

    (folder / "model.joblib").write_bytes(pickle.dumps(Evil(str(base / "code-ran"))))
    (paths["pickled_root"] / "classifier" / "LATEST").write_text("clf-old\n")
    # a usable classifier, and no extracted figures to score
    from sklearn.linear_model import LogisticRegression

    from pipeline import classify

    paths["scoring_root"] = base / "scoring_root"
    folder = classify.classifier_dir(paths["scoring_root"], "clf-1")
    folder.mkdir(parents=True)
    head = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    classify.save_classifier(folder, {"head": head, "calibrator": head,
                                      "card": {"version": "clf-1", "backbone": None,
                                               "layout_features": classify.FEATURE_NAMES}})
    (paths["scoring_root"] / "classifier" / "LATEST").write_text("clf-1\n")
    return {name: str(p) for name, p in paths.items()}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("cli-rule"))


def fill(argv: list[str], fixtures: dict[str, str]) -> list[str]:
    return [a.format(**fixtures) if "{" in a else a for a in argv]


def check_rule(code, err: str, expected: int, why: str) -> None:
    assert "Traceback" not in err, err
    assert code == expected, (code, err)
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(lines) == 1 and why in lines[0], err


def says(case) -> str:
    if len(case) == 4:
        return case[3]
    return [a for a in case[1] if a.startswith("--")][-1]


def case_id(case) -> str:
    module, argv = case[:2]
    return f"{module} {' '.join(argv)}"[:80]


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_invocation_follows_the_rule(case, fixtures, capsys, monkeypatch, tmp_path):
    module, argv, expected = case[:3]
    offline = {**OFFLINE, "CVF_DATA": fixtures["root"]}
    for name, value in offline.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # relative defaults (./manifests, results/) land here
    index = [i for i, c in enumerate(CASES) if c[0] == module].index(CASES.index(case))
    argv = fill(argv, fixtures)
    if (module, index) in SUBPROCESS:
        env = {**os.environ, **offline, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=120)
        check_rule(out.returncode, out.stderr, expected, says(case))
    else:
        main = importlib.import_module(module if module != "pipeline.replay" else "pipeline.replay.__main__").main
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        check_rule(code, capsys.readouterr().err, expected, says(case))
    ran = Path(fixtures["root"]).parent / "code-ran"
    if ran.exists():
        ran.unlink()  # so that the next case starts clean
        pytest.fail("a pickle from the data root ran code")
    written = list(Path(fixtures["empty"]).iterdir())
    for path in written:  # so that the next case starts clean
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert not written, f"a refused command wrote {written}"


def test_every_cli_module_is_in_the_table():
    """A new command gets its bad invocations here too: every module of the four packages that
    defines `main` has at least one case."""
    with_main = set()
    for package in ("pipeline", "labeling", "model", "flows"):
        for path in (REPO / package).rglob("*.py"):
            if "def main(" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(REPO).with_suffix("").parts
                with_main.add(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    assert with_main == {case[0] for case in CASES}

