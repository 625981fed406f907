"""Choose which figures people label, and record why.

Round 0 (no classifier yet) is a stratified sample: the same number of figures from every
(year, source kind) stratum, as far as the stratum holds them, so that early years and the PDF
fallback are not drowned by the thousands of 2022 e-print figures; inside a stratum the figures
are spread over as many papers as possible. Later rounds, once `scores/` exist, take the
figures whose score is nearest the decision threshold (uncertainty sampling). Every chosen
figure carries its `round` and the `rule` that chose it; both travel with the task into
Label Studio and come back into the labels table.

All choices are deterministic for a given seed, so a rerun picks the same figures.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict

from pipeline.config import data_root
from pipeline.store import read_table

Key = tuple[str, str]  # (paper_id, img_name): how a figure is named everywhere


def figure_key(row: dict) -> Key:
    return row["paper_id"], row["img_name"]


def labelable_figures(root: str | os.PathLike | None = None) -> list[dict]:
    """Figure records worth a person's look: rendered, ok, and not an exact duplicate.

    Each record gains `shard` and `year` (from the shard file it came from).
    """
    figures_dir = data_root(root) / "figures"
    out = []
    for path in sorted(figures_dir.glob("*.parquet")):
        shard = path.stem
        for row in read_table([path]).to_pylist():
            if row.get("status") != "ok" or not row.get("image_path") or row.get("dup_of"):
                continue
            row["shard"], row["year"] = shard, int(shard[:4])
            out.append(row)
    return out


def latest_scores(root: str | os.PathLike | None = None) -> dict[Key, dict]:
    """The classifier's scores per figure ({} before a classifier exists)."""
    paths = sorted((data_root(root) / "scores").glob("*.parquet"))
    if not paths:
        return {}
    return {figure_key(r): r for r in read_table(paths).to_pylist()}


def score_of(figure: dict, scores: dict[Key, dict]) -> dict | None:
    """The figure's score row, if it holds a score for this very image (same sha256)."""
    row = scores.get(figure_key(figure))
    if row is None or row.get("score") is None or row.get("sha256") != figure.get("sha256"):
        return None  # not scored, unreadable when scored, or scored before the image changed
    return row


def _order(seed: int, *parts: str) -> str:
    """A stable pseudo-random sort key: the same for the same seed and figure, on any machine."""
    return hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()


def _equal_shares(sizes: dict, count: int) -> dict:
    """Split `count` as evenly as possible over strata of the given sizes (water-filling)."""
    shares, left = {}, count
    strata = sorted(sizes, key=lambda s: (sizes[s], s))
    for i, s in enumerate(strata):
        shares[s] = min(sizes[s], left // (len(strata) - i) if i < len(strata) - 1 else left)
        left -= shares[s]
    return shares


def stratified(figures: list[dict], count: int, round_: int = 0, seed: int = 0) -> list[dict]:
    """`count` figures, equally many per (year, source_kind), spread over papers."""
    strata = defaultdict(list)
    for f in figures:
        strata[f["year"], f["source_kind"]].append(f)
    shares = _equal_shares({s: len(v) for s, v in strata.items()}, count)
    chosen = []
    for (year, kind), members in sorted(strata.items()):
        # Interleave papers: every paper's first figure, then every paper's second, ...
        by_paper = defaultdict(list)
        for f in members:
            by_paper[f["paper_id"]].append(f)
        ranked = []
        for paper, figs in by_paper.items():
            figs.sort(key=lambda f: _order(seed, *figure_key(f)))
            ranked += [(rank, _order(seed, paper), f) for rank, f in enumerate(figs)]
        ranked.sort(key=lambda t: t[:2])
        rule = f"stratified year={year} source={kind}"
        chosen += [{**f, "round": round_, "rule": rule} for _, _, f in ranked[:shares[year, kind]]]
    return chosen


def uncertain(figures: list[dict], scores: dict[Key, dict], count: int, round_: int,
              threshold: float = 0.5) -> list[dict]:
    """`count` scored figures whose score is nearest the threshold (ties: by name)."""
    scored = [(abs(s["score"] - threshold), figure_key(f), s, f)
              for f in figures if (s := score_of(f, scores)) is not None]
    scored.sort(key=lambda t: t[:2])
    chosen = []
    for distance, _, s, f in scored[:count]:
        model = s["model_version"]
        chosen.append({**f, "round": round_,
                       "rule": f"uncertainty |p-{threshold:g}|={distance:.3f} model={model}"})
    return chosen


def choose(figures: list[dict], scores: dict[Key, dict], count: int, round_: int,
           already: set[Key], rule: str = "auto", threshold: float = 0.5,
           seed: int = 0) -> list[dict]:
    """The next round's figures, never one that is already a task.

    rule: "stratified", "uncertainty", or "auto" (uncertainty once scores exist).
    """
    if count < 0:  # a negative count would slice from the end and upload nearly everything
        raise ValueError(f"count must be 0 or more, not {count}")
    if rule == "auto":
        rule = "uncertainty" if scores else "stratified"
    fresh = [f for f in figures if figure_key(f) not in already]
    if rule == "stratified":
        return stratified(fresh, count, round_, seed)
    if rule == "uncertainty":
        if not scores:
            raise ValueError("uncertainty sampling needs classifier scores (scores/*.parquet)")
        return uncertain(fresh, scores, count, round_, threshold)
    raise ValueError(f"unknown sampling rule {rule!r}")
