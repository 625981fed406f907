"""Bad input never passes as success: a manifest description that describes nothing, a bad
shard name, a missing folder or a malformed file is one `error:` line and a non-zero exit."""
from __future__ import annotations

import json

import pytest

from pipeline import classify, extract, verify


def run(main, argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def manifest_with(tmp_path, croissant) -> str:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "croissant.json").write_text(croissant if isinstance(croissant, str) else json.dumps(croissant))
    return str(folder)


def file_object(name: str, **kw) -> dict:
    return {"@type": "cr:FileObject", "name": name, "contentUrl": name, "sha256": "0" * 64, **kw}


@pytest.mark.parametrize("croissant, says", [
    ({}, "lists no data files"),
    ([], "not a JSON object (a JSON list)"),
    ("null", "not a JSON object"),
    ("{not json", "not JSON"),
    ({"distribution": [{"@type": "cr:FileObject", "name": "train.parquet", "sha256": "0" * 64}]},
     "(train.parquet) has no contentUrl"),
    ({"distribution": [file_object("train.parquet"), "val.parquet"]}, "entry 1 is not an object"),
    ({"distribution": [file_object("train.parquet"), {**file_object("val.parquet"), "sha256": ""}]},
     "(val.parquet) has no sha256"),
    ({"distribution": [file_object("train.parquet"), file_object("df_val.csv")]},
     "incomplete: val.parquet not listed"),
])
def test_verify_fails_on_a_croissant_that_describes_no_manifest(tmp_path, capsys, croissant, says):
    code, err = run(verify.main, [manifest_with(tmp_path, croissant)], capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


def test_verify_still_checks_a_complete_croissant(tmp_path, capsys):
    folder = manifest_with(tmp_path, {"distribution": [file_object("train.parquet"), file_object("val.parquet")]})
    code, _ = run(verify.main, [folder], capsys)
    assert code == 1  # both files listed, neither there: reported as missing, as before


def test_extract_bad_shard_and_missing_folder_are_one_error_line(tmp_path, capsys):
    (tmp_path / "papers").mkdir()
    code, err = run(extract.main, ["--root", str(tmp_path), "--shards", "2021-13"], capsys)
    assert code == 2 and "not a month shard (YYYY-MM): '2021-13'" in err
    code, err = run(extract.main, ["--root", str(tmp_path), "--shards", "2021-12"], capsys)
    assert code == 2 and "no papers/2021-12.parquet" in err
    code, err = run(extract.main, ["--root", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no papers/ folder" in err


def test_extract_malformed_papers_file_fails_that_shard_only(tmp_path, capsys):
    from test_extract import png, tar_gz, write_papers

    write_papers(tmp_path, "2021-05", {"2105.00001": tar_gz({"a.png": png((1, 2, 3))})})
    (tmp_path / "papers" / "2021-06.parquet").write_bytes(b"PAR1 not parquet at all")
    code, err = run(extract.main, ["--root", str(tmp_path)], capsys)
    errors = [line for line in err.splitlines() if "error" in line]  # (the rest: progress bars)
    assert code not in (0, None) and len(errors) == 1 and "2021-06" in errors[0]
    assert errors[0].startswith("error: 1 shards failed (the others are done, duplicates flagged)")
    assert (tmp_path / "figures" / "2021-05_stats.json").exists()  # the good shard finished
    assert json.loads((tmp_path / "figures" / "duplicates.json").read_text())["shards"] == 1


def test_classify_score_bad_shard_is_one_error_line(tmp_path, capsys):
    code, err = run(classify.main, ["score", "--root", str(tmp_path), "--shard", "2021-13"], capsys)
    assert code == 2 and "not a month shard" in err
    code, err = run(classify.main, ["score", "--root", str(tmp_path), "--shard", "2021-01"], capsys)
    assert code == 2 and "no figures/2021-01.parquet" in err
