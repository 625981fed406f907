"""The data contract: one module holds every stage's schema; docs/contract.md is made from it."""
from __future__ import annotations

import subprocess
import sys

from pipeline import contract


def test_docs_contract_is_generated_from_the_module():
    doc = contract.DOC_PATH.read_text()
    assert doc == contract.markdown(), (
        "docs/contract.md is out of date: run `python -m pipeline.contract --write`")


def test_every_column_has_a_one_line_description():
    for schema, name, _ in contract.TABLES:
        for field in schema:
            text = contract.description(field)
            assert text and "\n" not in text, f"{name}.{field.name} needs a one-line description"


def test_the_stages_use_the_contract_schemas_not_copies():
    from labeling import pull
    from pipeline import (bulk, bulk_records, bulk_selection, bulk_s3, classify, contamination, crawl, extract,
                          filter, licenses, publish, rebuild)

    assert crawl.PAPER_SCHEMA is contract.PAPER_SCHEMA
    assert bulk_records.TAR_SCHEMA is contract.TAR_SCHEMA
    assert contamination.CONTAMINATION_SCHEMA is contract.CONTAMINATION_SCHEMA
    assert licenses.LICENSE_SCHEMA is contract.LICENSE_SCHEMA
    assert extract.FIGURE_SCHEMA is rebuild.REBUILD_SCHEMA is contract.FIGURE_SCHEMA
    assert {"eprint_sha256", "version"} <= set(contract.FIGURE_SCHEMA.names)
    assert classify.SCORE_SCHEMA is contract.SCORE_SCHEMA
    assert pull.LABELS_SCHEMA is contract.ANNOTATION_SCHEMA
    assert filter.SELECTION_COLUMNS == contract.SELECTION_SCHEMA.names
    assert publish.MANIFEST_COLUMNS == contract.MANIFEST_SCHEMA.names
    # no stage module spells out a schema of its own
    for module in (bulk, bulk_records, bulk_selection, bulk_s3, classify, contamination, crawl, extract, filter,
                   licenses, publish, rebuild, pull):
        source = open(module.__file__).read()
        assert "pa.schema(" not in source, f"{module.__name__} defines a schema outside pipeline.contract"


def test_cli_prints_the_markdown():
    out = subprocess.run([sys.executable, "-m", "pipeline.contract"], capture_output=True, text=True, check=True)
    assert out.stdout == contract.markdown()
