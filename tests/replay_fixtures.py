"""The replay corpus and server, shared by the crawl's test modules (`from replay_fixtures import ...`)."""
from __future__ import annotations

import pytest

from pipeline.replay.corpus import generate_corpus
from pipeline.replay.server import Replay, ReplayServer

MONTHS = ["2021-01", "2021-02"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """One replay corpus for every test module of the session (generated once)."""
    out = tmp_path_factory.getbasetemp() / "replay-corpus"
    return out if (out / "papers.jsonl").exists() else generate_corpus(out, n_papers=14, months=MONTHS)


@pytest.fixture
def server(corpus):
    with ReplayServer(Replay(corpus)) as s:
        yield s
