"""The extract-figures flow on a local Dask cluster of two workers, and on an existing cluster
given by its scheduler's address, gives exactly the records (and PNG bytes) of a
single-process run."""
from __future__ import annotations

import pytest

from pipeline import store
from pipeline.extract import extract_shards
from test_extract import one_page_pdf, photo, tar_gz, write_papers


def build_corpus(root, testdata):
    """Three month shards: real CVF e-prints plus crafted papers with cross-shard duplicates."""
    write_papers(root, "2019-04", {"1904.03249": testdata / "eprints" / "1904.03249.tar.gz",
                                   "1904.00001": tar_gz({"a.png": photo(1), "b.pdf": one_page_pdf()})})
    write_papers(root, "2022-02", {"2202.04200": testdata / "eprints" / "2202.04200.tar.gz",
                                   "2202.00001": tar_gz({"copy_of_a.png": photo(1)})})
    write_papers(root, "2021-07", {"2107.00001": tar_gz({"x/y.png": photo(2), "broken.pdf": b"%PDF-"}),
                                   "2107.00002": b"PK\x03\x04 not a tar"})


def snapshot(root):
    shards = sorted(p.stem for p in (root / "figures").glob("*.parquet"))
    rows = {s: store.read_rows(root / "figures" / f"{s}.parquet") for s in shards}
    images = {p.relative_to(root).as_posix(): store.sha256_file(p)
              for p in sorted((root / "images").rglob("*.png"))}
    return rows, images


@pytest.mark.timeout(600)
def test_dask_flow_matches_single_process(testdata, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.extract import extract_figures

    from distributed import LocalCluster

    single, parallel = tmp_path / "single" / "data", tmp_path / "dask" / "data"
    remote = tmp_path / "remote" / "data"
    for root in (single, parallel, remote):
        build_corpus(root, testdata)
    extract_shards(["2019-04", "2021-07", "2022-02"], single, progress=False)
    # "Remote": a cluster the flow did not start, reached only through its scheduler's address.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      host="127.0.0.1", scheduler_port=0, dashboard_address=None) as cluster, \
            prefect_test_harness(server_startup_timeout=120):
        summary = extract_figures(root=str(parallel), workers=2, contact_sheet=6)
        extract_figures(root=str(remote), scheduler_address=cluster.scheduler_address)
        ran_there = [name for name in cluster.scheduler.task_prefixes if "extract_shard" in name]
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:") and ran_there
    assert snapshot(remote) == snapshot(single)
    assert summary["shards"] == 3 and summary["duplicates"]["exact_duplicates"] >= 1
    assert (parallel / "figures" / "contact_sheet.png").exists()
    rows_single, images_single = snapshot(single)
    rows_dask, images_dask = snapshot(parallel)
    assert rows_dask == rows_single
    assert images_dask == images_single and len(images_single) >= 8
    flagged = [r for rows in rows_dask.values() for r in rows if r["dup_of"]]
    assert any(r["paper_id"] == "2202.00001" and r["dup_of"] == "1904.00001/a.png" for r in flagged)
