"""The figure classifier: is this figure a grid of panels with at least one natural image?

    python -m pipeline.classify train [--weights resnet50-11ad3fa6.pth] [--truth truth.parquet] ...
    python -m pipeline.classify score [--version clf-...]

Features per figure = cheap layout features (`pipeline.features`) + optionally the pooled
embedding of an ImageNet torchvision backbone whose standard weights file the user provides
(nothing is downloaded). The head is a scikit-learn model (logistic regression or gradient
boosting) whose decision values are Platt-calibrated, so a score is a probability.

Training is cross-validated grouped by paper (all figures of a paper in one fold), and the
calibrator of each fold is fit on the other folds only, so the reported metrics are honest.
Outputs go to `classifier/<version>/`: `model.skops`, `card.json`, `card.md`, `pr_curve.png`;
`classifier/LATEST` names the newest. Scoring writes `scores/<shard>.parquet` + stats per
figure shard and skips shards already scored by the same model version.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             brier_score_loss, precision_recall_curve, precision_score, recall_score,
                             roc_auc_score)
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from model import cli
from pipeline import labels as labels_mod
from pipeline import store
from pipeline.contract import CV_PREDICTION_SCHEMA, SCORE_SCHEMA
from pipeline.config import data_root
from pipeline.features import CAPTION_FEATURE_NAMES, FEATURE_NAMES, layout_features, record_caption_features
from pipeline.photo_model import WEIGHTS as PHOTO_WEIGHTS
from pipeline.shards import check_shard_files

WEIGHTS_ENV = "CVF_BACKBONE_WEIGHTS"
DEFAULT_ARCH = "resnet50"
WEIGHTS_HELP = (
    "the standard torchvision ImageNet weights file of the backbone, e.g. resnet50-11ad3fa6.pth from "
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (or efficientnet_b0_rwightman-7f5810bc.pth); "
    f"pass it with --weights PATH or set ${WEIGHTS_ENV}"
)



# --- the backbone -----------------------------------------------------------------------------


def resolve_weights(weights: str | os.PathLike | None) -> Path | None:
    """The weights file from the flag or $CVF_BACKBONE_WEIGHTS; None when neither is set."""
    weights = weights or os.environ.get(WEIGHTS_ENV)
    if not weights:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}\nPut {WEIGHTS_HELP}.")
    return path


def arch_of_weights(path: Path) -> str:
    """The torchvision architecture a standard weights file is named after (resnet50-*.pth ...)."""
    names = torchvision.models.list_models(module=torchvision.models)
    matches = [n for n in names if path.name.startswith(n)]
    return max(matches, key=len) if matches else DEFAULT_ARCH


class Backbone:
    """A torchvision classifier with its last layer removed: image -> pooled embedding."""

    def __init__(self, weights: Path, arch: str | None = None, device: str | None = None):
        self.arch = arch or arch_of_weights(weights)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = torchvision.models.get_model(self.arch, weights=None)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated download, not a state_dict, a pickled model
            raise ValueError(f"{weights} is not a readable torchvision weights file ({type(e).__name__}); "
                             f"put {WEIGHTS_HELP}") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{weights} is not a {self.arch} state_dict (pass --arch): {e}") from None
        # resnet / efficientnet, convnext, mobilenet / vit / swin
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(model, head):
                setattr(model, head, torch.nn.Identity())
                break
        self.model = model.eval().to(self.device)
        self.weights_name = weights.name
        self.weights_sha256 = store.sha256_file(weights)

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.autocast(self.device, enabled=self.device == "cuda"):
            out = self.model(pixels.to(self.device, non_blocking=True))
        return out.flatten(1).float().cpu().numpy()


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_pixels(image: Image.Image, side: int = 224) -> torch.Tensor:
    """Pad to a white square, then resize: a wide grid keeps all its panels (no centre crop)."""
    image = image.convert("RGB")
    s = max(image.size)
    square = Image.new("RGB", (s, s), "white")
    square.paste(image, ((s - image.width) // 2, (s - image.height) // 2))
    square = square.resize((side, side), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - _MEAN) / _STD


# --- reading images: one pass gives layout features and backbone pixels -------------------------


class FigureImages(torch.utils.data.Dataset):
    """Figures' PNGs -> (layout features, pixels, error). A bad image gives an error, not a crash."""

    def __init__(self, root: Path, image_paths: list[str], with_pixels: bool):
        self.root, self.paths, self.with_pixels = root, image_paths, with_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.root / self.paths[i]) as im:
                im.load()
                feats = layout_features(im)
                pixels = to_pixels(im) if self.with_pixels else torch.zeros(0)
            return feats, pixels, ""
        except Exception as e:  # unreadable, truncated, missing: recorded per figure
            empty = torch.zeros(3, 224, 224) if self.with_pixels else torch.zeros(0)
            return np.zeros(len(FEATURE_NAMES), np.float32), empty, f"{type(e).__name__}: {e}"


def featurize(root: Path, image_paths: list[str], backbone: Backbone | None, batch_size: int = 32,
              workers: int = 0, desc: str = "features"):
    """Yield (feature matrix, errors) per batch, streaming over `image_paths` in order."""
    loader = torch.utils.data.DataLoader(
        FigureImages(root, image_paths, with_pixels=backbone is not None), batch_size=batch_size,
        num_workers=workers, pin_memory=backbone is not None and backbone.device == "cuda")
    with tqdm(total=len(image_paths), desc=desc, unit="fig", disable=None) as bar:
        for feats, pixels, errors in loader:
            x = feats.numpy()
            if backbone is not None:
                x = np.concatenate([x, backbone.embed(pixels)], axis=1)
            bar.update(len(errors))
            yield x, list(errors)


# --- the head, its calibration and cross-validation --------------------------------------------


def make_head(kind: str, seed: int = 0):
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, class_weight="balanced",
                                              random_state=seed)
    raise ValueError(f"unknown head {kind!r} (logreg or hgb)")


def unnamed_offset(y: np.ndarray, named: np.ndarray) -> float:
    """How much less often CVF kept a figure that no whole document of its LaTeX names (a copy
    left unused in the tree) than one it names, in log-odds, from the labels (smoothed; 0 when
    no labelled figure is unnamed, since then nothing says so)."""
    if named.all():
        return 0.0

    def log_odds(kept, n):
        p = (kept + 0.5) / (n + 1.0)
        return float(np.log(p / (1 - p)))
    return max(0.0, log_odds(y[named].sum(), named.sum()) - log_odds(y[~named].sum(), (~named).sum()))


def fit_head(kind: str, seed: int, x: np.ndarray, y: np.ndarray, named: np.ndarray):
    """The head and the unnamed figures' offset. The head learns from the figures the LaTeX
    names (those CVF's own classifier saw; unused copies in the tree are photo grids as often
    as not, and would teach it that photo grids are dropped); unnamed figures get its decision
    lowered by `unnamed_offset`."""
    fit_on = named if len(set(y[named])) == 2 else np.ones(len(y), bool)
    return clone(make_head(kind, seed)).fit(x[fit_on], y[fit_on]), unnamed_offset(y, named)


def decide(head, offset: float, x: np.ndarray, named: np.ndarray) -> np.ndarray:
    """The head's decision values, lowered by `offset` for figures no whole document names."""
    return head.decision_function(x) - offset * ~named


def fit_calibrator(decision: np.ndarray, y: np.ndarray) -> LogisticRegression:
    """Platt scaling: a 1-D logistic regression from decision value to probability."""
    return LogisticRegression(C=1e4).fit(decision.reshape(-1, 1), y)


def calibrated(calibrator: LogisticRegression, decision: np.ndarray) -> np.ndarray:
    return calibrator.predict_proba(decision.reshape(-1, 1))[:, 1]


def out_of_fold_decisions(x, y, groups, head_kind: str, folds: int, seed: int, named: np.ndarray):
    """Decision values of every figure from a head that never saw its paper, and each figure's fold."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(y), int)
    decision = np.empty(len(y))
    for k, (train, test) in enumerate(splitter.split(x, y, groups)):
        head, offset = fit_head(head_kind, seed, x[train], y[train], named[train])
        decision[test] = decide(head, offset, x[test], named[test])
        fold_of[test] = k
    return decision, fold_of


def usable_folds(y, groups, folds: int) -> int:
    """As many folds as asked, but no more than papers or than labels of the rarer class."""
    return min(folds, len(set(groups)), int(min(y.sum(), len(y) - y.sum())))


def cross_validate(x, y, groups, head_kind: str, folds: int, seed: int, named: np.ndarray | None = None):
    """Out-of-fold (calibrated probabilities, decision values, number of folds), grouped by paper.

    Decision values come from heads that never saw the paper. The calibrator of fold k is fit
    the way the final model's is, inside fold k's training papers only: on the out-of-fold
    decision values of an inner grouped CV over them. So it learns the scale of heads trained
    like fold k's, and nothing is scored by a model or calibrator that saw its paper. `named`:
    whether a whole document of the paper's LaTeX names each figure (`fit_head`); all by default.
    """
    named = np.ones(len(y), bool) if named is None else np.asarray(named, bool)
    folds = usable_folds(y, groups, folds)
    if folds < 2:
        raise ValueError(f"need at least 2 papers and 2 labels of each class for grouped CV "
                         f"(have {len(set(groups))} papers, {int(y.sum())} positives, "
                         f"{int(len(y) - y.sum())} negatives)")
    decision, fold_of = out_of_fold_decisions(x, y, groups, head_kind, folds, seed, named)
    prob = np.empty(len(y))
    for k in range(folds):
        train, this = fold_of != k, fold_of == k
        inner = usable_folds(y[train], groups[train], folds - 1)
        if inner >= 2:
            inner_decision, _ = out_of_fold_decisions(x[train], y[train], groups[train], head_kind, inner, seed,
                                                      named[train])
            calibrator = fit_calibrator(inner_decision, y[train])
        else:  # too few papers for an inner CV: the other folds' out-of-fold values
            rest = train if len(set(y[train])) == 2 else np.ones(len(y), bool)
            calibrator = fit_calibrator(decision[rest], y[rest])
        prob[this] = calibrated(calibrator, decision[this])
    return prob, decision, folds


def best_threshold(y, prob) -> float:
    """The threshold with the best F1 on out-of-fold probabilities."""
    precision, recall, thresholds = precision_recall_curve(y, prob)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def metrics(y, prob, threshold: float) -> dict:
    pred = (prob >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, prob)),
        "pr_auc": float(average_precision_score(y, prob)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred)),
        "brier": float(brier_score_loss(y, prob)),
        "threshold": threshold,
        "confusion": {"tp": int(((pred == 1) & (y == 1)).sum()), "fp": int(((pred == 1) & (y == 0)).sum()),
                      "tn": int(((pred == 0) & (y == 0)).sum()), "fn": int(((pred == 0) & (y == 1)).sum())},
    }


def plot_pr_curve(y, prob, threshold: float, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall, thresholds = precision_recall_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, lw=2, label=f"PR-AUC {average_precision_score(y, prob):.3f}")
    ax.axhline(y.mean(), ls="--", c="grey", lw=1, label=f"chance ({y.mean():.2f})")
    i = int(np.searchsorted(thresholds, threshold).clip(0, len(thresholds) - 1))
    ax.plot(recall[i], precision[i], "o", c="C3", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01),
           title="grid-with-photo classifier, grouped CV")
    ax.legend(loc="lower left")
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)


# --- train --------------------------------------------------------------------------------------


def figure_shards(root: Path) -> list[str]:
    """Figure shards that extraction finished (their stats file exists)."""
    return sorted(p.stem for p in (root / "figures").glob("*.parquet") if store.shard_done(root / "figures", p.stem))


def read_figures(root: Path, shard: str) -> list[dict]:
    return pq.read_table(root / "figures" / f"{shard}.parquet").to_pylist()


def scorable(fig: dict) -> bool:
    return fig.get("status") == "ok" and bool(fig.get("image_path"))


def figure_caption_features(figures: list[dict]) -> np.ndarray:
    """The LaTeX and caption features (`pipeline.features.record_caption_features`) of figure records."""
    if not figures:
        return np.zeros((0, len(CAPTION_FEATURE_NAMES)), np.float32)
    return np.stack([record_caption_features(f) for f in figures])


def named_by_latex(xc: np.ndarray) -> np.ndarray:
    """The `named_by_latex` column of caption features, as booleans."""
    return xc[:, CAPTION_FEATURE_NAMES.index("named_by_latex")] > 0.5


def caption_ablation(x, xc, y, groups, head: str, folds: int, seed: int, mode: str) -> tuple[bool, dict]:
    """Whether to use the caption features `xc` beside `x`, and the card's account of it: grouped CV
    with and without them (same folds). `mode` on/off decides; auto uses them when the
    out-of-fold PR-AUC is higher with them."""
    captioned = int(xc[:, CAPTION_FEATURE_NAMES.index("has_caption")].sum()) if len(xc) else 0
    report = {"mode": mode, "names": CAPTION_FEATURE_NAMES, "labelled_with_caption": captioned}
    if mode == "off":
        return False, dict(report, used=False, reason="turned off (--captions off)")
    if not len(xc) or (xc == xc[0]).all():
        return False, dict(report, used=False, reason="the LaTeX signals (inclusion, caption) are the same for every "
                                                      "labelled figure: not measured")
    measured = {}
    for name, features in (("without", x), ("with", np.concatenate([x, xc], axis=1))):
        prob, _, _ = cross_validate(features, y, groups, head, folds, seed, named_by_latex(xc))
        measured[name] = metrics(y, prob, best_threshold(y, prob))
    helps = measured["with"]["pr_auc"] > measured["without"]["pr_auc"]
    used = mode == "on" or helps
    return used, dict(report, used=used, helps=helps, cv_without=measured["without"], cv_with=measured["with"],
                      reason=("they help" if helps else "they do not help") + " in grouped CV (out-of-fold PR-AUC "
                      f"{measured['with']['pr_auc']:.3f} with, {measured['without']['pr_auc']:.3f} without)")


def train(root=None, weights=None, arch=None, label_studio=None, truth=None, cvf_index=(), head="logreg",
          folds=5, seed=0, version=None, batch_size=32, workers=0, captions="auto") -> Path:
    """Gather labels, featurize the labelled figures, cross-validate, fit, write classifier/<version>/.
    `captions`: auto (use the caption features when grouped CV says they help), on, off."""
    root = data_root(root)
    weights = resolve_weights(weights)
    if weights is None:
        print(f"no backbone weights: training on the {len(FEATURE_NAMES)} layout features alone. "
              f"For image embeddings put {WEIGHTS_HELP}.", file=sys.stderr)
    backbone = Backbone(weights, arch) if weights else None
    figures = [f for s in figure_shards(root) for f in read_figures(root, s)]
    if not figures:
        raise ValueError(f"no figure records under {root / 'figures'} (run extraction first)")
    label_studio = label_studio or root / "labels" / "labels.parquet"
    # The replay writes truth.parquet beside its papers; the demo keeps the replay under the root.
    truth = truth or next((p for p in (root / "truth.parquet", root / "replay" / "truth.parquet") if p.exists()), None)
    ok = [f for f in figures if scorable(f)]
    labels, label_report = labels_mod.gather(ok, label_studio, truth, cvf_index)
    if label_report["labels_for_missing_figures"]:
        print(f"ignored {label_report['labels_for_missing_figures']} labels for figures that do not exist "
              f"(e.g. {', '.join(label_report['missing_examples'][:3])})", file=sys.stderr)
    if label_report["labels_for_changed_images"]:
        print(f"ignored {label_report['labels_for_changed_images']} labels of images re-extracted since they were "
              f"labelled (sha256 differs; relabel them: e.g. {', '.join(label_report['changed_examples'][:3])})",
              file=sys.stderr)
    if label_report["cvf_index_papers_without_a_listed_name"]:
        print(f"no distant labels for {label_report['cvf_index_papers_without_a_listed_name']} indexed papers none of "
              f"whose extracted figures has a listed name (another version? e.g. "
              f"{', '.join(label_report['cvf_index_unmatched_examples'][:3])})", file=sys.stderr)
    if not labels:
        raise ValueError("no labels for any extracted figure: label some in Label Studio, or pass --truth / --cvf-index")

    path_of = {(f["paper_id"], f["img_name"]): f["image_path"] for f in ok}
    paths = [path_of[(r["paper_id"], r["img_name"])] for r in labels]
    t0 = time.time()
    parts, errors = [], []
    for x, errs in featurize(root, paths, backbone, batch_size, workers, desc="featurize labelled"):
        parts.append(x)
        errors += errs
    good = np.array([not e for e in errors])
    x = np.concatenate(parts)[good]
    y = np.array([r["label"] for r in labels])[good]
    groups = np.array([r["paper_id"] for r in labels])[good]
    featurize_s = time.time() - t0
    record_of = {(f["paper_id"], f["img_name"]): f for f in ok}
    xc = figure_caption_features([record_of[(r["paper_id"], r["img_name"])] for r in labels])[good]
    use_captions, caption_card = caption_ablation(x, xc, y, groups, head, folds, seed, captions)
    if use_captions:
        x = np.concatenate([x, xc], axis=1)

    named = named_by_latex(xc)
    prob, decision, n_folds = cross_validate(x, y, groups, head, folds, seed, named)
    threshold = best_threshold(y, prob)
    cv = {"at_threshold": metrics(y, prob, threshold), "at_0.5": metrics(y, prob, 0.5)}
    # Per label source: distant labels (cvf-index) are noisier than people's; show how each fares.
    sources = np.array([r["source"] for r in labels])[good]
    cv["by_source"] = {s: metrics(y[sources == s], prob[sources == s], threshold)
                       for s in labels_mod.SOURCES if len(set(y[sources == s])) == 2}
    final, offset = fit_head(head, seed, x, y, named)
    calibrator = fit_calibrator(decision, y)  # on all out-of-fold decision values

    version = version or "clf-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = classifier_dir(root, version)
    out.mkdir(parents=True, exist_ok=True)
    card = {
        "version": version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": "figure is grid-like and contains at least one natural image (CVF inclusion rule)",
        "backbone": ({"arch": backbone.arch, "weights_file": backbone.weights_name,
                      "weights_sha256": backbone.weights_sha256} if backbone else None),
        "features": int(x.shape[1]),
        "layout_features": FEATURE_NAMES,
        "photo_model_sha256": photo_model_sha256(),
        "caption_features": caption_card,
        "head": head,
        "calibration": "Platt scaling on the out-of-fold decision values (in grouped CV, each fold's calibrator "
                       "on an inner grouped CV over that fold's training papers)",
        "head_fit_on": "figures a whole document of the LaTeX names (both classes present)"
                       if len(set(y[named])) == 2 else "every labelled figure",
        "unnamed_offset": offset,
        "labelled_unnamed": int((~named).sum()),
        "labels": label_report,
        "unreadable_images": int((~good).sum()),
        "cv": {"scheme": "StratifiedGroupKFold by paper_id", "folds": n_folds, "seed": seed,
               "papers": len(set(groups)), **cv},
        "threshold": threshold,
        "featurize_seconds": round(featurize_s, 2),
    }
    card["disagreements"] = write_cv_predictions(root, out, [r for r, ok_ in zip(labels, good) if ok_],
                                                 [path for path, ok_ in zip(paths, good) if ok_], prob, threshold)
    save_classifier(out, {"head": final, "calibrator": calibrator, "card": card})
    plot_pr_curve(y, prob, threshold, out / "pr_curve.png")
    store.atomic_write_json(out / "card.json", card)
    store.atomic_write_text(out / "card.md", card_markdown(card))
    store.atomic_write_text(root / "classifier" / "LATEST", version + "\n")
    return out




def write_cv_predictions(root: Path, out: Path, labels: list[dict], paths: list[str], prob: np.ndarray,
                         threshold: float, max_sheet: int = 48) -> dict:
    """`cv_predictions.parquet` (every labelled figure's out-of-fold probability) and
    `disagreements.png`, a contact sheet of the false keeps then the false drops at the
    threshold, most confident first; returns the card's account of them."""
    rows = []
    for r, path, p in zip(labels, paths, prob):
        keep = p >= threshold
        outcome = ("keep" if r["label"] else "false keep") if keep else ("false drop" if r["label"] else "drop")
        rows.append({"paper_id": r["paper_id"], "img_name": r["img_name"], "image_path": path, "label": r["label"],
                     "source": r["source"], "prob": float(p), "outcome": outcome})
    store.write_rows(out / "cv_predictions.parquet", rows, CV_PREDICTION_SCHEMA)
    false_keeps = sorted((r for r in rows if r["outcome"] == "false keep"), key=lambda r: -r["prob"])
    false_drops = sorted((r for r in rows if r["outcome"] == "false drop"), key=lambda r: r["prob"])
    shown = false_keeps[:max_sheet // 2] + false_drops[:max_sheet // 2]
    (out / "disagreements.png").unlink(missing_ok=True)  # a sheet of an earlier model of this name
    if shown:
        from pipeline.contact_sheet import contact_sheet

        contact_sheet([root / r["image_path"] for r in shown], out / "disagreements.png", columns=6,
                      captions=[f"{'FK' if r['outcome'] == 'false keep' else 'FD'} {r['prob']:.2f} {r['paper_id']}"
                                for r in shown])
    return {"false_keeps": len(false_keeps), "false_drops": len(false_drops), "sheet": bool(shown),
            "examples": [f"{r['outcome']} {r['prob']:.2f} {r['paper_id']}/{r['img_name']}"
                         for r in (false_keeps[:5] + false_drops[:5])]}


def _caption_line(card: dict) -> str:
    c = card.get("caption_features") or {}
    if not c:
        return "not used (a model from before caption features)."
    line = (f"{'Used' if c['used'] else 'Not used'}: {c['reason']}; {c['labelled_with_caption']} labelled figures "
            f"have a caption. Features: has caption, length, sub-caption, panels, math, and cue words "
            f"({', '.join(n[4:] for n in c['names'] if n.startswith('cue_'))}).")
    if "cv_with" in c:
        w, wo = c["cv_with"], c["cv_without"]
        line += ("\n\n| grouped CV | ROC-AUC | PR-AUC | balanced accuracy |\n| --- | --- | --- | --- |\n"
                 f"| without captions | {wo['roc_auc']:.3f} | {wo['pr_auc']:.3f} | {wo['balanced_accuracy']:.3f} |\n"
                 f"| with captions | {w['roc_auc']:.3f} | {w['pr_auc']:.3f} | {w['balanced_accuracy']:.3f} |")
    return line


# What these features do on real papers next to the generated replay, as `benchmarks/bench_real.py`
# measured them (grouped CV by paper, the default training, no backbone). Every card quotes it, since
# the replay alone flatters a classifier; the benchmark writes a fresh real.md beside a card it trains.
REAL_PAPER_REFERENCE = """| labelled by | figures (kept) | ROC-AUC | PR-AUC |
| --- | --- | --- | --- |
| the official index, 6 real e-prints | 108 (15) | 0.956 | 0.866 |
| hand, 6 other real papers never trained on (PDF fallback) | 38 (9) | 1.000 | 1.000 |
| the generated replay's truth | 17 (2) | 0.900 | 0.700 |"""


def card_markdown(card: dict) -> str:
    m, m5 = card["cv"]["at_threshold"], card["cv"]["at_0.5"]
    lab = card["labels"]
    backbone = (f"`{card['backbone']['arch']}` embeddings (weights `{card['backbone']['weights_file']}`) + "
                f"{len(card['layout_features'])} image features" if card["backbone"]
                else f"{len(card['layout_features'])} image features (whole-figure layout and pixels; panels and "
                     f"their photo probability from the bundled photo model) without a backbone (no weights given)")
    gate = (f"The head is fit on {card.get('head_fit_on', 'every labelled figure')}; a figure no whole document "
            f"of its LaTeX names (a copy left unused in the tree) has its decision lowered by "
            f"{card.get('unnamed_offset', 0.0):.2f} in log-odds, learnt from the labels "
            f"({card.get('labelled_unnamed', 0)} labelled figures are unnamed).")
    dis = card.get("disagreements") or {}
    disagreements = (f"At the threshold, {dis['false_keeps']} false keeps and {dis['false_drops']} false drops "
                     f"(out of fold); `cv_predictions.parquet` holds every labelled figure's out-of-fold probability"
                     + (", and the contact sheet below shows the disagreements (FK false keep, FD false drop, "
                        "most confident first).\n\n![disagreements](disagreements.png)" if dis.get("sheet") else ".")
                     if dis else "")
    rows = "\n".join(f"| {k.replace('_', ' ')} | {m[k]:.3f} | {m5[k]:.3f} |"
                     for k in ["roc_auc", "pr_auc", "balanced_accuracy", "precision", "recall", "accuracy", "brier"])
    return f"""# Figure classifier `{card['version']}`

**Task.** {card['task']}.

**Inputs.** {backbone}; head `{card['head']}`, {card['calibration']}. {gate}

**Labels.** {lab['labels']} ({lab['positives']} positive, {lab['negatives']} negative), by source:
{', '.join(f'{k}: {v}' for k, v in lab['by_source'].items())}. Left out: labels for figures that do not exist
({lab['labels_for_missing_figures']}), labels of images re-extracted since ({lab.get('labels_for_changed_images', 0)}).

**Captions.** {_caption_line(card)}

**Evaluation.** {card['cv']['scheme']}, {card['cv']['folds']} folds over {card['cv']['papers']} papers;
every probability comes from a head and a calibrator that never saw the figure's paper.
The threshold ({card['threshold']:.3f}) maximises F1 on those out-of-fold probabilities.

| metric | at threshold {card['threshold']:.2f} | at 0.5 |
| --- | --- | --- |
{rows}

Out-of-fold ROC-AUC / balanced accuracy per label source: {', '.join(f"{s} {v['roc_auc']:.3f} / {v['balanced_accuracy']:.3f}" for s, v in card['cv']['by_source'].items()) or 'n/a'}.

Balanced accuracy is the figure to compare (accuracy flatters a classifier on imbalanced data:
Docling's figure classifier reports 0.907 accuracy but 0.688 balanced accuracy over 26 classes).

![PR curve](pr_curve.png)

{disagreements}

**Real papers and the replay.** What these features measured on real papers, next to the
generated replay (`benchmarks/bench_real.py`; the replay alone is easier than real papers):

{REAL_PAPER_REFERENCE}
"""


# --- score --------------------------------------------------------------------------------------


# --- saving and loading a classifier -----------------------------------------------------------
# A classifier folder may come from someone else (a shared dataset root, a downloaded model), so
# loading it must not run code: it is saved with skops, which rebuilds only the types it is told to
# trust, never with pickle. `model.joblib` (older versions) is a pickle and loads only when the user
# says they trust it.

MODEL_FILE = "model.skops"
PICKLE_FILE = "model.joblib"
# What skops does not trust by default but the heads and calibrators here are made of: plain data
# holders of scikit-learn (the fitted trees of HistGradientBoosting, CalibratedClassifierCV's parts).
# Every other scikit-learn estimator, numpy array and builtin container skops trusts already.
TRUSTED_TYPES = (
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


class ClassifierError(ValueError):
    """A classifier that cannot be used safely or at all: outside classifier/, untrusted, unreadable."""


def classifier_dir(root: Path, version: str) -> Path:
    """`root/classifier/<version>`, refusing a version that leaves `classifier/` once `..` and
    links are resolved (`--version ../..`, or a LATEST file naming such a path)."""
    base = (Path(root) / "classifier").resolve()
    if not version or "\0" in version:
        raise ClassifierError(f"classifier version {version!r} is not a name")
    path = (base / version).resolve()
    if path == base or not path.is_relative_to(base):
        raise ClassifierError(f"classifier version {version!r} leaves {base}: refused "
                              f"(a version is a folder name under classifier/)")
    return path


def save_classifier(out_dir: Path, obj: dict) -> Path:
    """Write `obj` (estimators, arrays, dicts of plain values) to `out_dir/model.skops`, atomically."""
    import skops.io

    path = Path(out_dir) / MODEL_FILE
    store.atomic_write_bytes(path, skops.io.dumps(obj))
    return path


def load_classifier(root: Path, version: str | None = None, trust_pickle: bool = False) -> dict:
    """The classifier `version` (default: the one classifier/LATEST names) of the data root.
    A `model.skops` holding any type beyond skops' defaults and TRUSTED_TYPES is refused, naming
    them; a `model.joblib` is unpickled only with `trust_pickle` (unpickling runs code from the file)."""
    import skops.io

    latest = Path(root) / "classifier" / "LATEST"
    if version is None and latest.is_file():
        version = latest.read_text(errors="replace").strip()
    if not version:
        raise FileNotFoundError(f"no trained classifier under {Path(root) / 'classifier'} "
                                f"(run `python -m pipeline.classify train`)")
    folder = classifier_dir(root, version)
    path = folder / MODEL_FILE
    if not path.is_file():
        if (folder / PICKLE_FILE).is_file():
            if not trust_pickle:
                raise ClassifierError(
                    f"{folder / PICKLE_FILE} is a pickle, which runs code from the file when loaded; "
                    f"pass --trust-pickle only if you made it or trust who did, or retrain")
            import joblib
            return joblib.load(folder / PICKLE_FILE)
        raise FileNotFoundError(f"classifier {version!r} not found: {path}")
    try:
        data = path.read_bytes()
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as e:  # a stranger's file: not a zip, a broken schema, ...
        raise ClassifierError(f"{path} is not a readable classifier ({type(e).__name__}: {e})") from None
    if refused := sorted(set(untrusted) - set(TRUSTED_TYPES)):
        raise ClassifierError(f"{path} holds types that are not trusted, refused: {', '.join(refused[:5])}")
    try:
        obj = skops.io.loads(data, trusted=list(untrusted))
    except Exception as e:
        raise ClassifierError(f"{path} is not a readable classifier ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not {"head", "calibrator", "card"} <= set(obj):
        raise ClassifierError(f"{path} is not a classifier of this pipeline (no head, calibrator and card)")
    return obj


def photo_model_sha256() -> str:
    """The bundled photo model's weights file: the panel features depend on it."""
    return store.sha256_file(PHOTO_WEIGHTS)


def check_features(card: dict) -> None:
    """Refuse a classifier whose image features are not the ones computed now (it was trained
    before they changed): its scores would be meaningless."""
    if card.get("layout_features") != FEATURE_NAMES:
        raise ValueError(f"classifier {card['version']} was trained on other image features "
                         f"({len(card.get('layout_features') or [])}, now {len(FEATURE_NAMES)}): retrain it with "
                         f"`python -m pipeline.classify train`")
    if card.get("photo_model_sha256") not in (None, photo_model_sha256()):
        raise ValueError(f"classifier {card['version']} was trained with another photo model "
                         f"({PHOTO_WEIGHTS.name} changed since): retrain it with `python -m pipeline.classify train`")


def score(root=None, version=None, weights=None, batch_size=64, workers=0, shards=None, device=None,
          keep_going: bool = True, trust_pickle: bool = False) -> dict:
    """Score every extracted figure, shard by shard; done shards of the same model are skipped.
    A shard that cannot be scored (an unreadable figure shard, say) is named in `failed_shards`
    with why and the others go on; `keep_going=False` raises instead (a Prefect task's retry)."""
    root = data_root(root)
    model = load_classifier(root, version, trust_pickle)
    card = model["card"]
    check_features(card)
    backbone = None
    if card["backbone"]:
        weights = resolve_weights(weights)
        if weights is None:
            raise FileNotFoundError(f"classifier {card['version']} needs backbone weights "
                                    f"{card['backbone']['weights_file']}: put {WEIGHTS_HELP}")
        backbone = Backbone(weights, card["backbone"]["arch"], device)
        if backbone.weights_sha256 != card["backbone"]["weights_sha256"]:
            raise ValueError(f"{weights} is not the weights file {card['backbone']['weights_file']} the classifier "
                             f"was trained with (sha256 differs)")
    summary = {"shards": 0, "skipped_shards": 0, "scored": 0, "errors": 0, "failed_shards": {}}
    for shard in shards or figure_shards(root):
        try:
            done = score_shard(root, shard, model, backbone, batch_size, workers)
        except (OSError, ValueError, pa.ArrowException) as e:
            if not keep_going:
                raise
            summary["failed_shards"][shard] = f"{type(e).__name__}: {e}"
            continue
        for k, v in done.items():
            summary[k] += v
    return summary


def score_shard(root: Path, shard: str, model: dict, backbone, batch_size: int, workers: int) -> dict:
    """Score one figure shard into scores/<shard>.parquet + stats (its checkpoint): the counts
    to add to the run's summary."""
    card, out_dir = model["card"], root / "scores"
    summary = {"shards": 0, "skipped_shards": 0, "scored": 0, "errors": 0}
    figures = [f for f in read_figures(root, shard) if scorable(f)]
    # A shard is done when the same model scored the same figures (re-extraction changes them).
    digest = store.sha256_bytes("\n".join(f"{f['paper_id']}/{f['img_name']}/{f.get('sha256', '')}"
                                           for f in figures).encode())
    done = store.read_stats(out_dir, shard)
    if done and done.get("model_version") == card["version"] and done.get("figures_digest") == digest:
        summary["skipped_shards"] += 1
        return summary
    t0 = time.time()
    rows = []
    batches = featurize(root, [f["image_path"] for f in figures], backbone, batch_size, workers, desc=f"score {shard}")
    start = 0
    with_captions = (card.get("caption_features") or {}).get("used", False)
    for x, errors in batches:
        xc = figure_caption_features(figures[start:start + len(errors)])
        if with_captions:
            x = np.concatenate([x, xc], axis=1)
        decision = decide(model["head"], card.get("unnamed_offset", 0.0), x, named_by_latex(xc))
        prob = calibrated(model["calibrator"], decision)
        for f, p, err in zip(figures[start:start + len(errors)], prob, errors):
            rows.append({"paper_id": f["paper_id"], "img_name": f["img_name"], "sha256": f.get("sha256", ""),
                         "score": None if err else float(p), "model_version": card["version"],
                         "status": "error" if err else "ok", "error": err})
        start += len(errors)
    store.write_rows(out_dir / f"{shard}.parquet", rows, SCORE_SCHEMA)
    errors = sum(r["status"] == "error" for r in rows)
    seconds = time.time() - t0
    store.write_stats(out_dir, shard, {
        "model_version": card["version"], "figures_digest": digest, "figures": len(rows), "errors": errors,
        "seconds": round(seconds, 3), "figures_per_second": round(len(rows) / max(seconds, 1e-9), 2),
        "device": backbone.device if backbone else "cpu"})
    summary["shards"] += 1
    summary["scored"] += len(rows) - errors
    summary["errors"] += errors
    return summary


# --- CLI ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.classify", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=cli.writable_dir, help="dataset root (default $CVF_DATA or ./data)")
    common.add_argument("--weights", help=f"backbone weights: {WEIGHTS_HELP}. Without it: layout features only")
    common.add_argument("--batch-size", type=cli.positive_int, default=32, help="figures per batch (default 32)")
    common.add_argument("--workers", type=cli.non_negative_int, default=0,
                        help="image-decoding worker processes (default 0)")

    t = sub.add_parser("train", parents=[common], help="fit the classifier with grouped-by-paper CV",
                       description="Gather labels (Label Studio > replay truth > official index), featurize the "
                                   "labelled figures, cross-validate by paper, fit, and write classifier/<version>/ "
                                   "(model.skops, card.json, card.md, pr_curve.png).")
    t.add_argument("--arch", help="torchvision architecture of --weights (default: from the file name)")
    t.add_argument("--labels", help="Label Studio labels (default ROOT/labels/labels.parquet)")
    t.add_argument("--truth", help="replay ground truth (default ROOT/truth.parquet or ROOT/replay/truth.parquet)")
    t.add_argument("--cvf-index", nargs="*", default=[], metavar="CSV",
                   help="official df_train.csv/df_val.csv for distant supervision")
    t.add_argument("--head", choices=["logreg", "hgb"], default="logreg",
                   help="logistic regression (default) or histogram gradient boosting")
    t.add_argument("--folds", type=cli.positive_int, default=5, help="cross-validation folds, grouped by paper (default 5)")
    t.add_argument("--seed", type=int, default=0, help="seed of the folds and the head (default 0)")
    t.add_argument("--version", help="name of the model, a folder name under classifier/ (default clf-<UTC time>)")
    t.add_argument("--captions", choices=["auto", "on", "off"], default="auto",
                   help="caption features (cue words such as 'qualitative', 'comparison'; length; sub-caption): "
                        "auto (default) uses them when grouped CV with them beats CV without; the model card "
                        "reports both")

    s = sub.add_parser("score", parents=[common], help="score every extracted figure -> scores/<shard>.parquet",
                       description="Score every extracted figure with a trained classifier, one month shard at a "
                                   "time, into scores/<shard>.parquet; shards already scored by the same model "
                                   "and figures are skipped.")
    s.add_argument("--version", help="classifier version, a folder under ROOT/classifier/ (default: the one "
                                      "classifier/LATEST names)")
    s.add_argument("--trust-pickle", action="store_true",
                   help="also load a classifier saved by older versions as model.joblib, a pickle: loading it "
                        "RUNS CODE FROM THE FILE, so only for a file you made or whose maker you trust")
    s.add_argument("--shard", nargs="*", help="only these month shards")
    s.add_argument("--device", help="torch device for the backbone (default: cuda when present, else cpu)")
    args = p.parse_args(argv)
    try:
        check_shard_files(getattr(args, "shard", None), data_root(args.root) / "figures", "pipeline.extract")
    except ValueError as e:
        p.error(str(e))
    try:
        if args.command == "train":
            if args.version:  # refused before any work when it leaves classifier/
                classifier_dir(data_root(args.root), args.version)
            out = train(args.root, args.weights, args.arch, args.labels, args.truth, args.cvf_index, args.head,
                        args.folds, args.seed, args.version, args.batch_size, args.workers, args.captions)
            card = json.loads((out / "card.json").read_text())
            m = card["cv"]["at_threshold"]
            print(f"classifier {card['version']} -> {out}\n  grouped CV over {card['cv']['papers']} papers: "
                  f"ROC-AUC {m['roc_auc']:.3f}  PR-AUC {m['pr_auc']:.3f}  balanced acc {m['balanced_accuracy']:.3f}  "
                  f"precision {m['precision']:.3f}  recall {m['recall']:.3f} at threshold {m['threshold']:.3f}")
        else:
            summary = score(args.root, args.version, args.weights, args.batch_size, args.workers, args.shard,
                            args.device, trust_pickle=args.trust_pickle)
            if not summary["shards"] + summary["skipped_shards"] + len(summary["failed_shards"]):
                raise FileNotFoundError(f"nothing to score: no extracted figures/<shard>.parquet under "
                                        f"{data_root(args.root)} (run python -m pipeline.extract)")
            print(f"scored {summary['scored']} figures in {summary['shards']} shards "
                  f"({summary['skipped_shards']} already done, {summary['errors']} unreadable)")
            if summary["failed_shards"]:
                failed = summary["failed_shards"]
                print(f"error: {len(failed)} shards could not be scored (the others were): "
                      + "; ".join(f"{s}: {why}" for s, why in failed.items()), file=sys.stderr)
                return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
