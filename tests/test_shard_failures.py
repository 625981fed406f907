"""At scale one bad shard must not cost the others: the extract-figures and score-figures flows
run their shards in parallel on Dask; a shard that fails is retried, then reported, while the
others finish (extracted and duplicate-flagged, or scored) before the flow fails naming it."""
from __future__ import annotations

import json

import pytest

from pipeline import classify, store
from test_extract import photo, tar_gz, write_papers
from test_features import make_corpus


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_failing_shard_is_reported_and_the_others_finish(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.classify import score_figures
    from flows.common import ShardsFailed
    from flows.extract import extract_figures

    extracted = tmp_path / "extracted"
    write_papers(extracted, "2021-01", {"2101.00001": tar_gz({"a.png": photo(1)})})
    write_papers(extracted, "2021-02", {"2102.00001": tar_gz({"copy.png": photo(1)})})
    (extracted / "papers" / "2021-03.parquet").write_bytes(b"PAR1 cut short")

    scored = tmp_path / "scored"
    make_corpus(scored, n_papers=9, figures_per_paper=3, shards=("2019-03", "2020-07", "2021-01"))
    classify.train(scored, folds=3, version="clf-fail")
    (scored / "figures" / "2020-07.parquet").write_bytes(b"PAR1 cut short")

    with prefect_test_harness(server_startup_timeout=120):
        with pytest.raises(ShardsFailed, match=r"1 shards failed \(2021-03: .*\); the other 2 were extracted"):
            extract_figures(root=str(extracted), workers=2)
        with pytest.raises(ShardsFailed, match=r"1 shards failed \(2020-07: .*\); the other 2 were scored"):
            score_figures(str(scored), workers=2)

    # the good extract shards are done, and their cross-shard duplicate is flagged
    assert store.shard_done(extracted / "figures", "2021-01") and store.shard_done(extracted / "figures", "2021-02")
    assert json.loads((extracted / "figures" / "duplicates.json").read_text())["exact_duplicates"] == 1
    copy = store.read_rows(extracted / "figures" / "2021-02.parquet")[0]
    assert copy["dup_of"] == "2101.00001/a.png"
    # the good score shards are checkpointed: a rerun skips them
    for shard in ("2019-03", "2021-01"):
        assert store.read_stats(scored / "scores", shard)["model_version"] == "clf-fail"
    again = classify.score(scored, shards=["2019-03", "2021-01"])
    assert again["skipped_shards"] == 2 and again["scored"] == 0


def test_score_cli_reports_a_failing_shard_and_scores_the_others(tmp_path, capsys):
    make_corpus(tmp_path, n_papers=6, figures_per_paper=3, shards=("2019-03", "2020-07"))
    classify.train(tmp_path, folds=3, version="clf-cli")
    (tmp_path / "figures" / "2019-03.parquet").write_bytes(b"PAR1 cut short")
    capsys.readouterr()  # (training's notes)
    code = classify.main(["score", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # (the rest: progress bars)
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: 1 shards could not be scored (the others were): 2019-03: ")
    assert store.read_stats(tmp_path / "scores", "2020-07")["figures"] == 9
