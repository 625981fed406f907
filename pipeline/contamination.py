"""Evaluation images inside training figures: find them, report them, so the filter leaves them out.

    python -m pipeline.contamination --against VOC2012/JPEGImages --list VOC2012/ImageSets/Segmentation/val.txt
    python -m pipeline.contamination --against imagenet/val --against pascal5i/JPEGImages --name imagenet-val --name pascal5i

Papers show the images that models are evaluated on (segmentation results on Pascal VOC, colorization
on ImageNet). A figure corpus that holds them leaks the test set into training. This stage compares
every panel of every extracted figure (and the whole figure) with every image of an evaluation folder
and writes `contamination/<NAME>.parquet`, one row per figure that shows an evaluation image
(CONTAMINATION_SCHEMA). `pipeline.filter` leaves those figures out unless `--keep-contaminated`.

How a match is found (details in docs/contamination.md):

1. Index. Each evaluation image (decoded at reduced size, grey) is hashed many times: the whole image
   and square-grid crops of 95% down to 70% of its sides at offsets 5% apart, each also mirrored, so a
   figure panel that shows a resized, cropped, JPEG'd or flipped copy hashes close to one of them. The
   hash is a 64-bit DCT hash (pHash) of the region squeezed to 32x32.
2. Lookup. Each panel (`pipeline.panels.find_panels`, cut as the classifier cuts it and again at sharp
   seams, with unions of neighbouring cells of the second cut) is hashed whole and as five 94% crops; the
   hashes within RADIUS bits of an index hash are found by multi-index hashing (the bit blocks of
   `pipeline.near_duplicates`): sub-linear, a few hundred table probes a hash.
3. Verification. A hash match is a candidate, never a verdict (flat or dark images hash alike). The
   panel is matched against the candidate's region, searched over shift and scale, by correlation of
   small grey thumbnails: both the grey levels and their high-pass detail must agree (robustly, so
   boxes drawn over the copy do not break it). A colour mask of the same image has its outline but
   not its texture and fails the detail test.

A rerun with the same evaluation images (names, sizes, modification times, the list) and the same
figure shards does nothing; a changed set is recomputed. Hashes of the evaluation images and of each
figure shard's panels are cached under `contamination/.work/`, so adding a shard or an evaluation
set hashes only what is new.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from scipy.fft import dctn
from tqdm import tqdm

from model import cli
from pipeline import config, store
from pipeline.contract import CONTAMINATION_SCHEMA
from pipeline.near_duplicates import _bit_blocks, _flips, _popcount
from pipeline.panels import as_rgb, find_panels


# --- parameters (calibrated in docs/contamination.md) -------------------------------------------
EVAL_SIDE = 256          # evaluation images are hashed and verified at this longer side
HASH_SIDE = 512          # figures are hashed from a copy of at most this longer side ...
FIGURE_SIDE = 4096       # ... and verified at full size (extraction makes them at most 1024 px)
MAX_PIXELS = 64_000_000  # an image over this many pixels is refused, never decoded (bomb; a PNG this big is 192 MB)
CROP_SCALES = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # index crops: share of each side kept ...
CROP_STEP = 0.05         # ... at offsets this far apart
QUERY_CROP = 0.94        # a panel is also hashed as its centre and corner crops of this share
RADIUS = 8               # hash bits a candidate may differ by
BLOCKS = 3               # bit blocks of the multi-index hash ...
PROBE_BITS = 1           # ... probed up to this many bits off for a panel's corner crops (exact up to 5 bits,
                         # most pairs up to RADIUS); up to RADIUS // BLOCKS (exact to RADIUS) for its first
EXACT_QUERIES = 2        # hashes: the whole panel and its centre
BUCKET_CAP = 64          # most index hashes compared per probed bucket (bounds the work on crowded buckets)
CANDIDATES = 4           # evaluation images verified per panel (the nearest by hash)
MERGE_RUN = 4            # unions of up to this many neighbouring panels cut at sharp seams are compared ...
MERGE_GAP = 4            # ... when at most this many pixels apart
MIN_PANEL = 24           # panels smaller than this (pixels, either side) are not compared
TEMPLATE = 64            # verification thumbnail's longer side
MIN_TEMPLATE_SIDE = 20  # ... and its shorter side at least this (regions longer than 3:1 are not verified)
ASPECT_TOLERANCE = 1.4   # a panel's aspect ratio within this factor of the matched region's (crops change it)
SEARCH_MARGIN = 0.15     # the candidate region is searched this much beyond its box on each side ...
SEARCH_SCALES = (0.88, 0.94, 1.0, 1.06, 1.13)  # ... at these scales
DETAIL_MIN = 0.65        # verified: robust correlation of high-pass detail at least this ...
GREY_MIN = 0.85          # ... and robust correlation of grey levels at least this
CONTRAST_RATIO = 2.0     # grey contrast (std) of panel and image region within this factor of each other ...
DETAIL_RATIO = 2.5       # ... and their detail (high-pass std) within this one
DETAIL_GAIN = 1.5        # ... and the panel's detail at most this much above the region's
FLAT_STD = 2.0           # a region with less grey spread (of 255) than this is flat: never a match
EXACT_MIN = 0.995        # an unflipped whole-image match this close is `exact`
METHOD = "phash-mih-ncc-5"  # changes when the method does: cached hashes and results are redone

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ContaminationError(ValueError):
    """Bad input a user can fix (an empty folder, a list naming nothing): one clear message."""


# --- images, opened bounded ---------------------------------------------------------------------

def open_grey(path: str | os.PathLike, side: int) -> np.ndarray:
    """An image file as a float32 grey array of at most `side` pixels on its longer side, never decoded
    at more than needed: JPEGs are decoded at reduced scale (draft), anything over MAX_PIXELS is
    refused before decoding. Raises ValueError with the reason for an unreadable or refused file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, never decoded
            img = Image.open(path)
        with img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ValueError(f"{w}x{h} is over the {MAX_PIXELS / 1e6:.0f} Mpx limit")
            if img.format == "JPEG":
                img.draft("RGB", (side, side))
            img.seek(0)
            img.thumbnail((side, side), Image.Resampling.BOX, reducing_gap=2.0)
            rgb = as_rgb(img)
    except ValueError:
        raise
    except (OSError, Image.DecompressionBombError, SyntaxError, EOFError) as e:
        raise ValueError(f"unreadable image: {type(e).__name__}: {e}") from None
    return grey(rgb)


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


# --- hashes ---------------------------------------------------------------------------------------

def dct_hashes(regions: list[np.ndarray]) -> np.ndarray:
    """64-bit DCT hashes (pHash: the 8x8 lowest frequencies of the region squeezed to 32x32, each
    bit whether its coefficient is above their median) of grey regions, as uint64."""
    if not regions:
        return np.zeros(0, np.uint64)
    small = np.stack([cv2.resize(r, (32, 32), interpolation=cv2.INTER_AREA) for r in regions])
    low = dctn(small, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(regions), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def crop_boxes() -> np.ndarray:
    """The index's regions of an image, as (x0, y0, x1, y1) shares of its sides: the whole image first."""
    boxes = [(0.0, 0.0, 1.0, 1.0)]
    for s in CROP_SCALES:
        steps = np.linspace(0.0, 1.0 - s, int(round((1.0 - s) / CROP_STEP)) + 1)
        boxes += [(x, y, x + s, y + s) for y in steps for x in steps]
    return np.array(boxes, np.float64)


BOXES = crop_boxes()


def cut(g: np.ndarray, box) -> np.ndarray:
    """The region of `g` at `box` (shares of its sides)."""
    h, w = g.shape
    x0, y0, x1, y1 = box
    return g[int(y0 * h):max(int(y0 * h) + 1, int(np.ceil(y1 * h))),
             int(x0 * w):max(int(x0 * w) + 1, int(np.ceil(x1 * w)))]


def image_hashes(g: np.ndarray) -> np.ndarray:
    """Every index hash of one evaluation image: BOXES of the image, then BOXES of its mirror."""
    mirrored = np.ascontiguousarray(g[:, ::-1])
    return dct_hashes([cut(g, b) for b in BOXES] + [cut(mirrored, b) for b in BOXES])


def query_regions(g: np.ndarray) -> list[np.ndarray]:
    """A panel and its four corner and centre crops of QUERY_CROP: a copy cropped between the index's
    crop steps still lands near one of them."""
    s, m = QUERY_CROP, (1 - QUERY_CROP) / 2
    return [g] + [cut(g, (x, y, x + s, y + s)) for x, y in ((m, m), (0, 0), (1 - s, 0), (0, 1 - s), (1 - s, 1 - s))]


QUERIES_PER_REGION = 6


# --- multi-index hashing over a fixed set -------------------------------------------------------

class HashIndex:
    """Finds, for query hashes, stored 64-bit hashes within `radius` bits: multi-index hashing.

    The 64 bits are cut into `blocks` blocks (`pipeline.near_duplicates._bit_blocks`). A query is
    compared only with the stored hashes whose value on some block is its own or up to `probe_bits`
    bits off (`_flips`): its buckets. By pigeonhole every stored hash within
    blocks x (probe_bits + 1) - 1 bits is in one of them, so up to that distance the search is exact;
    between that and `radius`, a pair is found when its differing bits are unevenly spread over the
    blocks (most are), which the several hashes of a panel and of an image make up for. Each block's
    hashes are sorted by block value, so a probe is two binary searches and a bucket a contiguous run;
    at most `bucket_cap` hashes of a bucket are compared (a crowded bucket of near-identical flat images
    costs no more than a full one). Work per query hash: blocks x probes x min(bucket, cap), where a
    bucket holds stored / 2^(64 / blocks) hashes on average: about 2 x 10^-6 of the index for 3 blocks."""

    def __init__(self, hashes: np.ndarray, radius: int = RADIUS, blocks: int = BLOCKS,
                 probe_bits: int | None = None, bucket_cap: int = BUCKET_CAP):
        self.hashes = np.asarray(hashes, np.uint64)
        self.radius, self.bucket_cap = radius, bucket_cap
        self.blocks = _bit_blocks(blocks)
        self.probe_bits = radius // blocks if probe_bits is None else probe_bits
        self.exact_up_to = blocks * (self.probe_bits + 1) - 1
        self.order, self.keys = [], []
        for shift, mask in self.blocks:  # blocks of at most 32 bits: keys and places fit 4 bytes
            key = ((self.hashes >> np.uint64(shift)) & np.uint64(mask)).astype(np.uint32)
            order = np.argsort(key, kind="stable").astype(np.int32 if len(key) < 2**31 else np.int64)
            self.order.append(order)
            self.keys.append(key[order])

    def search(self, queries: np.ndarray, probe_bits: int | None = None,
               chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, stored index, bits apart) of the pairs within the radius that the probes reach
        (`probe_bits`: this call's, else the index's), each pair once."""
        queries = np.asarray(queries, np.uint64)
        bits = self.probe_bits if probe_bits is None else probe_bits
        flip_masks = [np.array(_flips(mask.bit_length(), bits), np.uint64) for _, mask in self.blocks]
        found_q, found_s, found_d = [], [], []
        for start in range(0, len(queries), chunk):
            q = queries[start:start + chunk]
            pairs_q, pairs_s = [], []
            for (shift, mask), flips, order, keys in zip(self.blocks, flip_masks, self.order, self.keys):
                probe = ((((q >> np.uint64(shift)) & np.uint64(mask))[:, None] ^ flips[None, :]).ravel()
                         .astype(np.uint32))
                lo = np.searchsorted(keys, probe, "left")
                size = np.minimum(np.searchsorted(keys, probe, "right") - lo, self.bucket_cap)
                total = int(size.sum())
                if not total:
                    continue
                owner = np.repeat(np.arange(len(probe)) // len(flips), size)
                offset = np.arange(total) - np.repeat(np.cumsum(size) - size, size)
                pairs_q.append(owner)
                pairs_s.append(order[np.repeat(lo, size) + offset])
            if not pairs_q:
                continue
            pq_, ps = np.concatenate(pairs_q), np.concatenate(pairs_s)
            dist = _popcount(q[pq_] ^ self.hashes[ps]).astype(np.int32)
            near = dist <= self.radius
            pq_, ps, dist = pq_[near], ps[near], dist[near]
            # a pair can be found through several blocks: keep it once
            key = np.unique(pq_.astype(np.int64) * len(self.hashes) + ps, return_index=True)[1]
            found_q.append(pq_[key] + start)
            found_s.append(ps[key])
            found_d.append(dist[key])
        if not found_q:
            empty = np.zeros(0, np.int64)
            return empty, empty, np.zeros(0, np.int32)
        return np.concatenate(found_q), np.concatenate(found_s), np.concatenate(found_d)


# --- verification -------------------------------------------------------------------------------

def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-6))


def robust_correlation(a: np.ndarray, b: np.ndarray, keep: float = 0.9) -> float:
    """Correlation of two equal-size arrays over the `keep` share of pixels where they agree best
    (standardised): lines and boxes drawn over a copy are outliers, not disagreement."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    inliers = _inliers(a, b, keep)
    return _correlation(a[inliers], b[inliers])


def _inliers(a: np.ndarray, b: np.ndarray, keep: float = 0.9) -> np.ndarray:
    """The `keep` share of pixels where two flat arrays, standardised, agree best."""
    za, zb = (a - a.mean()) / (a.std() + 1e-6), (b - b.mean()) / (b.std() + 1e-6)
    residual = np.abs(za - zb)
    return residual <= np.quantile(residual, keep)


def _detail(x: np.ndarray) -> np.ndarray:
    return x - cv2.GaussianBlur(x, (0, 0), 1.5)


def verify(panel: np.ndarray, image: np.ndarray, variant: int) -> tuple[float, float]:
    """How well a grey `panel` matches the region of index hash `variant` of the grey evaluation
    `image` (at EVAL_SIDE): (grey correlation, detail correlation), both robust, at the best shift and
    scale within SEARCH_MARGIN and SEARCH_SCALES of the region. 1.0 is a perfect match."""
    flipped = variant >= len(BOXES)
    if flipped:
        image = np.ascontiguousarray(image[:, ::-1])
    x0, y0, x1, y1 = BOXES[variant % len(BOXES)]
    h, w = image.shape
    mx, my = SEARCH_MARGIN * (x1 - x0), SEARCH_MARGIN * (y1 - y0)
    region = np.ascontiguousarray(image[max(0, int((y0 - my) * h)):min(h, int(np.ceil((y1 + my) * h))),
                                        max(0, int((x0 - mx) * w)):min(w, int(np.ceil((x1 + mx) * w)))])
    bw, bh = (x1 - x0) * w, (y1 - y0) * h
    s = TEMPLATE / max(bw, bh)
    if min(bw, bh) * s < MIN_TEMPLATE_SIDE:  # a sliver (a label row, a strip): too little to tell
        return 0.0, 0.0
    aspect = (panel.shape[1] / panel.shape[0]) / (bw / bh)
    if not 1 / ASPECT_TOLERANCE <= aspect <= ASPECT_TOLERANCE:  # a copy keeps its shape, up to a crop
        return 0.0, 0.0
    template = cv2.resize(panel, (max(8, round(bw * s)), max(8, round(bh * s))), interpolation=cv2.INTER_AREA)
    best, best_patch = -1.0, None
    for f in SEARCH_SCALES:
        rw, rh = round(region.shape[1] * s * f), round(region.shape[0] * s * f)
        if rw < template.shape[1] or rh < template.shape[0]:
            continue
        scaled = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        _, score, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(scaled, template, cv2.TM_CCOEFF_NORMED))
        if score > best:
            best, best_patch = score, scaled[y:y + template.shape[0], x:x + template.shape[1]]
    if best_patch is None:
        return 0.0, 0.0
    detail_t, detail_p = _detail(template), _detail(best_patch)
    # A copy keeps its contrast within a modest colour change; a flat region matched to a busy panel
    # (or a blank one to anything) correlates by chance, so it scores 0.
    for a, b, most in ((template, best_patch, CONTRAST_RATIO), (detail_t, detail_p, DETAIL_RATIO)):
        sa, sb = float(a.std()), float(b.std())
        if min(sa, sb) < FLAT_STD or max(sa, sb) > most * min(sa, sb):
            return 0.0, 0.0
    # Nor does a copy gain detail (it loses some to resizing and JPEG): a panel busier than the region,
    # where they agree (lines drawn over the copy left out), is another picture with the same layout.
    a, b = detail_t.ravel().astype(np.float64), detail_p.ravel().astype(np.float64)
    inliers = _inliers(a, b)
    if a[inliers].std() > DETAIL_GAIN * b[inliers].std():
        return 0.0, 0.0
    return robust_correlation(template, best_patch), robust_correlation(detail_t, detail_p)


def is_match(grey_score: float, detail_score: float) -> bool:
    return grey_score >= GREY_MIN and detail_score >= DETAIL_MIN


# --- the evaluation set ---------------------------------------------------------------------------

@dataclass
class EvalSet:
    """An evaluation folder's images (paths relative to `folder`) and their index hashes."""
    name: str
    folder: Path
    images: list[str]
    sizes: list[int]
    mtimes: list[int]
    listed_missing: list[str] = field(default_factory=list)
    list_file: str = ""
    list_sha256: str = ""

    def fingerprint(self) -> str:
        h = hashlib.sha256(METHOD.encode())
        h.update(f"{self.list_sha256}\0".encode())
        for p, s, m in zip(self.images, self.sizes, self.mtimes):
            h.update(f"{p}\0{s}\0{m}\n".encode())
        return h.hexdigest()


def listed_ids(list_file: str | os.PathLike) -> set[str]:
    """Image ids of a list file: one per line (VOC's ImageSets), `<voc_id>__<class>` lines of the
    Pascal-5i folds counted once by their id; blank lines and `#` comments skipped."""
    ids = set()
    for line in Path(list_file).read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.add(line.split()[0].split("__")[0])
    return ids


def scan_folder(folder: str | os.PathLike, name: str | None = None,
                list_file: str | os.PathLike | None = None) -> EvalSet:
    """The images of an evaluation folder (recursively; hidden files skipped), restricted to the ids
    of `list_file` when given (matched by file stem, or by path without suffix)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContaminationError(f"--against {folder}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath, f))
    rel = [p.relative_to(folder).as_posix() for p in found]
    missing, list_sha = [], ""
    if list_file is not None:
        if not Path(list_file).is_file():
            raise ContaminationError(f"--list {list_file}: no such file")
        wanted = listed_ids(list_file)
        if not wanted:
            raise ContaminationError(f"--list {list_file}: no image ids in it")
        keep = [i for i, r in enumerate(rel) if Path(r).stem in wanted or r.rsplit(".", 1)[0] in wanted]
        have = {Path(rel[i]).stem for i in keep} | {rel[i].rsplit(".", 1)[0] for i in keep}
        missing = sorted(wanted - have)
        found, rel = [found[i] for i in keep], [rel[i] for i in keep]
        list_sha = store.sha256_file(list_file)
    if not rel:
        what = f"none of the {len(missing)} ids of {list_file}" if list_file else f"no images ({', '.join(IMAGE_SUFFIXES)})"
        raise ContaminationError(f"--against {folder}: {what} found in the folder")
    stats = [p.stat() for p in found]
    return EvalSet(name or default_set_name(folder), folder, rel, [s.st_size for s in stats],
                   [s.st_mtime_ns for s in stats], missing, str(list_file or ""), list_sha)


def _hash_eval_image(path: str) -> tuple[np.ndarray | None, str]:
    try:
        return image_hashes(open_grey(path, EVAL_SIDE)), "ok"
    except ValueError as e:
        return None, str(e)


def index_eval_set(eval_set: EvalSet, work: Path, workers: int = 1, progress: bool = True) -> dict:
    """The evaluation set's hashes, per-image status and image of each hash: computed once per
    fingerprint and kept in `work/<name>.index.npz`."""
    cache = work / f"{eval_set.name}.index.npz"
    fingerprint = eval_set.fingerprint()
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint:
                return {k: z[k] for k in z.files}
    paths = [str(eval_set.folder / r) for r in eval_set.images]
    per_image = len(BOXES) * 2
    hashes = np.zeros((len(paths), per_image), np.uint64)
    ok = np.zeros(len(paths), bool)
    status = []
    results = _map(_hash_eval_image, paths, workers, desc=f"index {eval_set.name}", unit="image", progress=progress)
    for i, (h, why) in enumerate(results):
        status.append(why)
        if h is not None:
            hashes[i], ok[i] = h, True
    arrays = {"fingerprint": np.array(fingerprint), "hashes": hashes[ok].ravel(),
              "image": np.repeat(np.flatnonzero(ok), per_image).astype(np.int32),
              "variant": np.tile(np.arange(per_image, dtype=np.int16), int(ok.sum())),
              "status": np.array(status)}
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{eval_set.name}.index.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    return arrays


# --- the figures --------------------------------------------------------------------------------

def figure_queries(path: str | os.PathLike) -> tuple[list[tuple[int, int, int, int]], np.ndarray, str]:
    """A figure's compared regions (its panels, then the whole figure when it has several) in its own
    pixels, their QUERIES_PER_REGION hashes each, and a status."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                return [], np.zeros((0, QUERIES_PER_REGION), np.uint64), f"{w}x{h} is over the pixel limit"
            img.load()
            rgb = as_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, EOFError) as e:
        return [], np.zeros((0, QUERIES_PER_REGION), np.uint64), f"unreadable image: {type(e).__name__}: {e}"
    # the panels as the classifier sees them, and those found when sharp seams also cut (photos edge to
    # edge): a photo that the second cuts in two along a horizon is still compared whole from the first
    cut_at_peaks = find_panels(rgb, peak_seams=True)
    boxes = list(dict.fromkeys(b for b in find_panels(rgb) + cut_at_peaks + merged_runs(cut_at_peaks)
                               if b[2] - b[0] >= MIN_PANEL and b[3] - b[1] >= MIN_PANEL))
    whole = (0, 0, rgb.shape[1], rgb.shape[0])
    if len(boxes) != 1 and whole not in boxes and min(whole[2:]) >= MIN_PANEL:
        boxes.append(whole)
    # hashed from a copy of at most HASH_SIDE pixels: a hash sees 32x32 of a region anyway, and
    # squeezing a large region straight to 32x32 costs more than shrinking the figure once
    scale = min(1.0, HASH_SIDE / max(rgb.shape[:2]))
    g = grey(rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)),
                                                        max(1, round(rgb.shape[0] * scale))),
                                                  interpolation=cv2.INTER_AREA))
    regions = []
    for x0, y0, x1, y1 in boxes:
        x0, y0 = int(x0 * scale), int(y0 * scale)
        regions += query_regions(g[y0:max(y0 + 1, int(np.ceil(y1 * scale))), x0:max(x0 + 1, int(np.ceil(x1 * scale)))])
    return boxes, dct_hashes(regions).reshape(len(boxes), QUERIES_PER_REGION), "ok"


def merged_runs(boxes: list[tuple[int, int, int, int]], most: int = MERGE_RUN,
                gap: int = MERGE_GAP) -> list[tuple[int, int, int, int]]:
    """Unions of 2 to `most` neighbouring boxes of one row (same top and bottom, side by side) or one
    column (same left and right, one above the other): a photo whose own straight edges (a tower, a
    window frame) made the seam cut split it is whole again in one of them."""
    out = []
    for axis in (0, 1):  # 0: boxes side by side in a row; 1: boxes stacked in a column
        lo, hi = (1, 3) if axis == 0 else (0, 2)  # the span they share
        start, end = (0, 2) if axis == 0 else (1, 3)  # where they follow each other
        lines: dict[tuple[int, int], list] = {}
        for b in boxes:
            lines.setdefault((b[lo], b[hi]), []).append(b)
        for line in lines.values():
            line.sort(key=lambda b: b[start])
            for i in range(len(line)):
                for j in range(i + 1, min(len(line), i + most)):
                    if line[j][start] - line[j - 1][end] > gap:
                        break
                    first, last = line[i], line[j]
                    out.append((first[0], first[1], last[2], last[3]))
    return out


def figure_shards(root: Path) -> list[str]:
    """Done figure shards (their stats written)."""
    return sorted(p.name[: -len("_stats.json")] for p in (root / "figures").glob("*_stats.json")
                  if (root / "figures" / p.name.replace("_stats.json", ".parquet")).exists())


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def shard_queries(root: Path, shard: str, work: Path, workers: int = 1, progress: bool = True) -> dict:
    """Every panel hash of a figure shard, cached in `work/queries/<shard>.npz` until the shard changes:
    `figure` (row in the shard's figures), `box` (x0, y0, x1, y1), `hashes` (QUERIES_PER_REGION a box),
    plus the figures' keys and unreadable ones."""
    parquet = root / "figures" / f"{shard}.parquet"
    key = f"{METHOD}|{_file_key(parquet)}"
    cache = work / "queries" / f"{shard}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in z.files}
    table = pq.read_table(parquet, columns=["paper_id", "img_name", "status", "image_path"])
    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["image_path"]]
    results = _map(figure_queries, [str(root / r["image_path"]) for r in rows], workers,
                   desc=f"panels {shard}", unit="figure", progress=progress)
    figure, boxes, hashes, errors = [], [], [], []
    for i, (bxs, hs, status) in enumerate(results):
        if status != "ok":
            errors.append(f"{rows[i]['paper_id']}/{rows[i]['img_name']}: {status}")
        figure += [i] * len(bxs)
        boxes += bxs
        hashes.append(hs)
    arrays = {"key": np.array(key), "paper_id": np.array([r["paper_id"] for r in rows], dtype=str),
              "img_name": np.array([r["img_name"] for r in rows], dtype=str),
              "image_path": np.array([r["image_path"] for r in rows], dtype=str),
              "figure": np.array(figure, np.int64), "box": np.array(boxes, np.int32).reshape(-1, 4),
              "hashes": np.concatenate(hashes) if hashes else np.zeros((0, QUERIES_PER_REGION), np.uint64),
              "errors": np.array(errors, dtype=str)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{shard}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)
    return arrays


def _map(fn, items: list, workers: int, desc: str, unit: str, progress: bool):
    """fn over items in order, in `workers` processes (1: here), with a progress bar."""
    bar = dict(total=len(items), desc=desc, unit=unit, disable=not progress, leave=False)
    if workers <= 1 or len(items) < 8:
        return [fn(x) for x in tqdm(items, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=16), **bar))


class _GreyCache:
    """Grey images by path, the most recently used `size` kept."""

    def __init__(self, side: int, size: int = 512):
        self.side, self.size, self.items = side, size, OrderedDict()

    def get(self, path: str) -> np.ndarray | None:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        try:
            g = open_grey(path, self.side)
        except ValueError:
            g = None
        self.items[path] = g
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return g


def match_shard(queries: dict, index: HashIndex, eval_index: dict, eval_set: EvalSet, root: Path,
                eval_images: _GreyCache, figure_images: _GreyCache) -> list[dict]:
    """The verified matches of one shard's panels against one evaluation set: one row per figure and
    evaluation image (its best panel)."""
    hashes = queries["hashes"]
    if not len(hashes):
        return []
    # the hashes of the whole panel and its centre are searched exactly up to RADIUS; the corner crops'
    # up to 5 bits (and most pairs beyond): a third of the work of searching all exactly
    e = EXACT_QUERIES
    exact_q, exact_s, exact_d = index.search(hashes[:, :e].ravel(), probe_bits=RADIUS // BLOCKS)
    crop_q, crop_s, crop_d = index.search(hashes[:, e:].ravel(), probe_bits=PROBE_BITS)
    region = np.concatenate([exact_q // e, crop_q // (QUERIES_PER_REGION - e)])
    s, d = np.concatenate([exact_s, crop_s]), np.concatenate([exact_d, crop_d])
    image, variant = eval_index["image"][s].astype(np.int64), eval_index["variant"][s].astype(np.int64)
    # per (region, evaluation image): the nearest hash; per region: the CANDIDATES nearest images
    order = np.lexsort((d, image, region))
    region, image, variant, d = region[order], image[order], variant[order], d[order]
    first = np.r_[True, (region[1:] != region[:-1]) | (image[1:] != image[:-1])]
    region, image, variant, d = region[first], image[first], variant[first], d[first]
    order = np.lexsort((d, region))
    region, image, variant, d = region[order], image[order], variant[order], d[order]
    rank = np.arange(len(region)) - np.searchsorted(region, region, "left")
    keep = rank < CANDIDATES
    best: dict[tuple[int, int], dict] = {}
    for r, i, v, dist in zip(region[keep].tolist(), image[keep].tolist(), variant[keep].tolist(), d[keep].tolist()):
        fig = int(queries["figure"][r])
        x0, y0, x1, y1 = (int(c) for c in queries["box"][r])
        figure_grey = figure_images.get(str(root / queries["image_path"][fig]))
        eval_grey = eval_images.get(str(eval_set.folder / eval_set.images[i]))
        if figure_grey is None or eval_grey is None:
            continue
        panel = figure_grey[y0:y1, x0:x1]
        if min(panel.shape) < 8:
            continue
        grey_score, detail_score = verify(panel, eval_grey, v)
        if not is_match(grey_score, detail_score):
            continue
        flipped = v >= len(BOXES)
        kind = ("flipped" if flipped else
                "exact" if v == 0 and dist == 0 and grey_score >= EXACT_MIN else "near")
        row = {"paper_id": str(queries["paper_id"][fig]), "img_name": str(queries["img_name"][fig]),
               "eval_image": eval_set.images[i], "panel_bbox": [x0, y0, x1, y1], "distance": int(dist),
               "kind": kind, "score": round(float(grey_score), 4), "detail": round(float(detail_score), 4),
               "image_path": str(queries["image_path"][fig])}
        earlier = best.get((fig, i))
        if earlier is None or row["score"] > earlier["score"]:
            best[(fig, i)] = row
    return list(best.values())


# --- the stage ----------------------------------------------------------------------------------

def run(against: list[str | os.PathLike], root=None, names: list[str] | None = None,
        lists: list[str | os.PathLike | None] | None = None, workers: int | None = None,
        force: bool = False, progress: bool = True) -> dict:
    """Compare every figure of the root with each evaluation folder in `against`; writes
    `contamination/<name>.parquet` and `<name>.json` (the report) per folder. Returns the reports by name.
    A folder whose images and list and the figure shards are unchanged since its last run is skipped."""
    root = config.data_root(root)
    names = list(names or [])
    lists = list(lists or [])
    if not against:
        raise ContaminationError("give at least one --against DIR")
    for what, values in (("--name", names), ("--list", lists)):
        if values and len(values) not in (1, len(against)) or (len(values) == 1 and len(against) > 1 and what == "--name"):
            raise ContaminationError(f"give {what} once per --against ({len(against)}), or once for a single folder")
    names = names or [None] * len(against)
    lists = lists * len(against) if len(lists) == 1 else (lists or [None] * len(against))
    sets = [scan_folder(folder, n, l) for folder, n, l in zip(against, names, lists)]
    seen = {}
    for s in sets:
        if not _valid_name(s.name):
            raise ContaminationError(f"bad evaluation set name {s.name!r}: use letters, digits, '.', '_', '-' (--name)")
        if s.name in seen:
            raise ContaminationError(f"two evaluation folders are both named {s.name!r}: tell them apart with --name")
        seen[s.name] = s
    if not (root / "figures").is_dir():
        raise ContaminationError(f"no figures/ folder under {root} (run python -m pipeline.extract, or give --root)")
    shards = figure_shards(root)
    if not shards:
        raise ContaminationError(f"no extracted figure shards under {root / 'figures'} (run python -m pipeline.extract)")
    workers = workers or max(1, (os.cpu_count() or 1))
    out_dir, work = root / "contamination", root / "contamination" / ".work"
    figures_key = hashlib.sha256("|".join(_file_key(root / "figures" / f"{s}.parquet") for s in shards).encode()).hexdigest()
    reports = {}
    for eval_set in sets:
        fingerprint = hashlib.sha256(f"{eval_set.fingerprint()}|{figures_key}".encode()).hexdigest()
        report_path = out_dir / f"{eval_set.name}.json"
        if not force and report_path.exists() and (out_dir / f"{eval_set.name}.parquet").exists():
            previous = json.loads(report_path.read_text())
            if previous.get("fingerprint") == fingerprint:
                reports[eval_set.name] = dict(previous, skipped=True)
                continue
        start = time.monotonic()
        eval_index = index_eval_set(eval_set, work, workers, progress)
        statuses = eval_index["status"].tolist()
        if not len(eval_index["hashes"]):
            raise ContaminationError(f"--against {eval_set.folder}: none of its {len(statuses)} images could be read "
                                     f"(first: {eval_set.images[0]}: {statuses[0]})")
        index = HashIndex(eval_index["hashes"])
        eval_images, figure_images = _GreyCache(EVAL_SIDE), _GreyCache(FIGURE_SIDE, size=64)
        rows, figures, unreadable = [], 0, []
        for shard in tqdm(shards, desc=f"compare {eval_set.name}", unit="shard", disable=not progress or len(shards) < 2):
            queries = shard_queries(root, shard, work, workers, progress)
            figures += len(queries["paper_id"])
            unreadable += queries["errors"].tolist()
            rows += match_shard(queries, index, eval_index, eval_set, root, eval_images, figure_images)
        rows.sort(key=lambda r: (r["paper_id"], r["img_name"], r["eval_image"]))
        store.write_rows(out_dir / f"{eval_set.name}.parquet", rows, CONTAMINATION_SCHEMA)
        bad = [(p, s) for p, s in zip(eval_set.images, statuses) if s != "ok"]
        report = {
            "name": eval_set.name, "folder": str(eval_set.folder.resolve()), "list": eval_set.list_file,
            "fingerprint": fingerprint, "method": METHOD,
            "eval_images": len(eval_set.images), "eval_images_unreadable": len(bad),
            "eval_unreadable_examples": [f"{p}: {s}" for p, s in bad[:20]],
            "listed_not_found": len(eval_set.listed_missing),
            "listed_not_found_examples": eval_set.listed_missing[:20],
            "shards": len(shards), "figures": figures, "figures_unreadable": len(unreadable),
            "figures_unreadable_examples": unreadable[:20],
            "matches": len(rows), "figures_matched": len({(r["paper_id"], r["img_name"]) for r in rows}),
            "papers_matched": len({r["paper_id"] for r in rows}),
            "eval_images_found": len({r["eval_image"] for r in rows}),
            "by_kind": {k: sum(r["kind"] == k for r in rows) for k in ("exact", "near", "flipped")},
            "seconds": round(time.monotonic() - start, 2),
        }
        store.atomic_write_json(report_path, report)  # last: the set is done
        reports[eval_set.name] = report
    return reports


def default_set_name(folder: Path) -> str:
    """The set's name when --name is not given: the folder's, made a safe file name
    (`VOC 2012/JPEGImages` -> `JPEGImages`, `my evals` -> `my_evals`)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.resolve().name).lstrip("._-")
    return name or "evaluation"


def _valid_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name))


def contaminated_figures(root=None) -> dict[str, set[tuple[str, str]]]:
    """(paper_id, img_name) of the figures each evaluation set was found in, by set name, from
    `contamination/*.parquet` (empty when the stage never ran)."""
    root = config.data_root(root)
    out = {}
    for path in sorted((root / "contamination").glob("*.parquet")):
        table = pq.read_table(path, columns=["paper_id", "img_name"])
        out[path.stem] = set(zip(table["paper_id"].to_pylist(), table["img_name"].to_pylist()))
    return out


CONTACT_SHEET = "contact_contamination.png"


def card_section(root, selection_report: dict, out_dir: Path, samples: int = 24) -> tuple[str, list[Path]]:
    """The dataset card's section on evaluation images (Markdown) and the contact sheet it shows
    (written to `out_dir`, returned in the list; none when no figure may be shown). The sheet follows
    the card's licence rule: only figures of papers whose licence allows redistribution."""
    from pipeline.contact_sheet import contact_sheet
    from pipeline.licenses import allows_redistribution

    root = config.data_root(root)
    reports = {}
    for path in sorted((root / "contamination").glob("*.json")):
        try:
            reports[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    reports = {k: v for k, v in reports.items() if (root / "contamination" / f"{k}.parquet").exists()}
    left_out = selection_report.get("contaminated_left_out", {})
    if not reports:
        return ("No evaluation set was checked: figures may show test images of benchmarks "
                "(`python -m pipeline.contamination --against DIR` checks a folder of them)."), []
    kept = selection_report.get("contaminated_kept", False)
    rows = "\n".join(
        f"| {n} | {r['eval_images']} | {r['figures_matched']} | {r['papers_matched']} | {r['eval_images_found']} | "
        f"{', '.join(f'{k} {v}' for k, v in r['by_kind'].items())} | "
        f"{'kept (--keep-contaminated)' if kept else left_out.get(n, 0)} |" for n, r in reports.items())
    text = ("Figures were compared with the evaluation images below, panel by panel, also as resized, cropped, "
            "recompressed, recoloured, drawn-on or mirrored copies (`pipeline.contamination`). "
            + ("The figures found are **kept** in this release (`--keep-contaminated`)." if kept else
               "The figures found are **left out** of this release, so it can be used to train for these "
               "benchmarks.") + " The matches are listed in `contamination/<set>.parquet` of the build.\n\n"
            "| evaluation set | images | figures showing them | papers | images found | kind | left out of candidates |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n" + rows)
    licences = _paper_licences(root)
    matches = []
    for name in reports:
        for r in pq.read_table(root / "contamination" / f"{name}.parquet",
                               columns=["paper_id", "img_name", "image_path"]).to_pylist():
            if allows_redistribution(licences.get(r["paper_id"])) and (root / r["image_path"]).exists():
                matches.append(r)
    unique = sorted({(r["paper_id"], r["img_name"]): r for r in matches}.values(),
                    key=lambda r: (r["paper_id"], r["img_name"]))[:samples]
    if not unique:
        return text + "\n\n_(no match is from an openly licensed paper, so none is shown)_", []
    sheet = contact_sheet([root / r["image_path"] for r in unique], Path(out_dir) / CONTACT_SHEET,
                          captions=[r["paper_id"] for r in unique])
    return (text + "\n\nMatches from openly licensed papers (CC BY, CC BY-SA, CC0, public domain), crediting their "
            f"arXiv ids:\n\n![figures showing evaluation images]({CONTACT_SHEET})"), [sheet]


def _paper_licences(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted((root / "papers").glob("*.parquet")):
        table = pq.read_table(path)
        if "license" in table.column_names:
            out.update(zip(table["arxiv_id"].to_pylist(), table["license"].to_pylist()))
    return out


def format_report(report: dict) -> str:
    if report.get("skipped"):
        return (f"{report['name']}: unchanged since the last run (same images, list and figure shards): "
                f"{report['figures_matched']} figures show its images")
    line = (f"{report['name']}: {report['figures_matched']} of {report['figures']} figures ({report['papers_matched']} papers) "
            f"show {report['eval_images_found']} of its {report['eval_images']} images "
            f"({', '.join(f'{k} {v}' for k, v in report['by_kind'].items())}) in {report['seconds']} s")
    notes = []
    if report["eval_images_unreadable"]:
        notes.append(f"{report['eval_images_unreadable']} evaluation images unreadable, e.g. "
                     + "; ".join(report["eval_unreadable_examples"][:3]))
    if report["listed_not_found"]:
        notes.append(f"{report['listed_not_found']} listed ids not in the folder, e.g. "
                     + ", ".join(report["listed_not_found_examples"][:5]))
    if report["figures_unreadable"]:
        notes.append(f"{report['figures_unreadable']} figure PNGs unreadable, e.g. "
                     + "; ".join(report["figures_unreadable_examples"][:3]))
    return "\n".join([line] + [f"  warning: {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.contamination",
        description="Find evaluation images (VOC, ImageNet, Pascal-5i, any folder of images) inside the extracted "
                    "figures, also when resized, cropped, recompressed, recoloured, drawn on or mirrored. Writes "
                    "contamination/<NAME>.parquet (one row per figure showing one of the images) and <NAME>.json "
                    "(counts, unreadable files); `python -m pipeline.filter` then leaves those figures out.",
        epilog="A rerun with unchanged folders, lists and figure shards does nothing. Method and measured "
               "precision/recall: docs/contamination.md.")
    p.add_argument("--against", action="append", required=True, metavar="DIR",
                   help="a folder of evaluation images (searched recursively); repeat for several sets")
    p.add_argument("--list", action="append", metavar="FILE",
                   help="only the images whose ids this file lists, one a line (VOC ImageSets/*.txt; Pascal-5i "
                        "fold lists of <voc_id>__<class>); once for all folders or once per --against")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="name of the set, for contamination/<NAME>.parquet (default: the folder's name); "
                        "once per --against")
    p.add_argument("--root", type=cli.writable_dir, help="dataset root (default $CVF_DATA or ./data)")
    p.add_argument("--workers", type=cli.non_negative_int, default=0, help="processes hashing images (default: every core)")
    p.add_argument("--force", action="store_true", help="recompute even when nothing changed")
    args = p.parse_args(argv)
    if args.workers < 0:
        p.error(f"--workers must be 0 (every core) or more, got {args.workers}")
    try:
        reports = run(args.against, args.root, args.name, args.list, args.workers or None, args.force,
                      progress=sys.stderr.isatty())
    except (ContaminationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for report in reports.values():
        print(format_report(report))
    print(f"results -> {config.data_root(args.root) / 'contamination'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
