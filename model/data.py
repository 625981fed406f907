"""Training data for MAE-VQGAN: image lists, deterministic augmentation, resumable sampling.

Where images come from:
* an image folder (searched recursively),
* a folder of WebDataset-style tar shards (`python -m model.data pack` writes them: few big files
  instead of 100k small ones; members are read by offset, so access stays random), or
* a published manifest (`train.parquet`, `.jsonl`, or the official `df_train.csv`) plus the
  folder the images were rebuilt into. A row with an `image_path` column points at its file
  (relative to that folder, as `pipeline.publish` writes it); otherwise the official layout is
  used: `<images>/<split>/<paper_id>/<img_name>` (or `<images>/<paper_id>/...`) for PNGs,
  `<img_name>_<paper_id>_0.png` for PDF figures.

Exact resume without saving worker state: the augmentation of an image is a pure function of
(seed, image index, variant), the order of an epoch a pure function of (seed, epoch), and each
data-parallel rank takes a strided slice of it. Resuming = skipping the batches already done.
Variant = the epoch (a fresh crop each epoch), or, with a token cache, one of K crops whose VQGAN
tokens were computed once (`build_token_cache`).

Workers decode and crop; they return uint8 images (4x less to copy than float), and the trainer
normalises on the device.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import math
import tarfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from model import cli
from model.files import atomic_write
from model.vqgan import imagenet_mean_std

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# -- which images ----------------------------------------------------------------------------

def read_manifest(path) -> list[dict]:
    """Rows of a Parquet, JSONL or CSV manifest."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{path}: manifest must be .parquet, .jsonl or .csv")


def official_file_name(paper_id: str, img_name: str) -> str:
    """The official downloader's file name: PNGs keep theirs, PDFs were rasterised."""
    return img_name if img_name.lower().endswith(".png") else f"{img_name}_{paper_id}_0.png"


def manifest_split(path: Path) -> str:
    """`train.parquet` / `df_train.csv` -> train; `val.*` / `df_val.csv` -> val."""
    stem = path.stem.removeprefix("df_")
    return stem if stem in ("train", "val") else "train"


class TarMember(NamedTuple):
    """An image stored uncompressed inside a tar shard, read by byte offset."""
    tar: Path
    name: str
    offset: int
    size: int

    def __str__(self):
        return f"{self.tar}#{self.name}"

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def list_tar_members(folder: Path) -> list[TarMember]:
    members = []
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:  # reads the headers only
            members += [TarMember(tar, m.name, m.offset_data, m.size) for m in t
                        if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES]
    return members


def list_images(source, images=None, split: str | None = None) -> list:
    """Image files (Paths, or TarMembers of a shard folder) of a folder or of a manifest
    whose images lie under `images`."""
    source = Path(source)
    if source.is_dir() and any(source.glob("*.tar")):
        return list_tar_members(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
        return files
    if not source.is_file():
        raise FileNotFoundError(f"no such manifest or image folder: {source}")
    if images is None:
        raise ValueError(f"{source} is a manifest: pass the folder its images were rebuilt into "
                         "(--images DIR, e.g. the --out of `python -m pipeline.rebuild`)")
    images = Path(images)
    rows = read_manifest(source)
    if split is not None and rows and "split" in rows[0]:
        rows = [r for r in rows if r["split"] == split]
    default_split = split or manifest_split(source)
    files, seen = [], set()
    for r in rows:
        if r.get("image_path"):
            f = images / r["image_path"]
        else:  # `<split>/<paper_id>/<name>` as rebuilt, else `<paper_id>/<name>`
            name = official_file_name(r["paper_id"], r["img_name"])
            f = images / (r.get("split") or default_split) / r["paper_id"] / name
            if not f.is_file() and (images / r["paper_id"] / name).is_file():
                f = images / r["paper_id"] / name
        if f not in seen:  # the official index repeats some rows
            seen.add(f)
            files.append(f)
    missing = [f for f in files if not f.is_file()]
    if len(missing) == len(files):
        raise FileNotFoundError(f"none of the {len(files)} images of {source} exist under {images} "
                                f"(first expected: {files[0] if files else '-'})")
    if missing:
        warnings.warn(f"{len(missing)} of {len(files)} images of {source} are missing under {images}; "
                      f"training on the {len(files) - len(missing)} present (first missing: {missing[0]})")
        files = [f for f in files if f.is_file()]
    return files


def fingerprint(files: list) -> str:
    """Identifies an image list (a token cache is only valid for the list it was built on)."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
    return h.hexdigest()[:16]


# -- augmentation ----------------------------------------------------------------------------

def crop_box(rng: np.random.Generator, width: int, height: int, scale=(0.2, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom), drawn from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height  # fall back to a central crop, as torchvision does
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment(img: Image.Image, rng: np.random.Generator, size: int, scale=(0.2, 1.0)) -> torch.Tensor:
    """RandomResizedCrop(size, scale, bicubic) + horizontal flip -> uint8 [3, size, size]."""
    box = crop_box(rng, img.width, img.height, scale)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device):
    return imagenet_mean_std(torch.float32, device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> ImageNet-normalised float32 (done on the device, after the copy)."""
    mean, std = _mean_std(images.device)
    return (images.float() / 255 - mean) / std


# -- dataset and sampler ---------------------------------------------------------------------

class CropDataset(Dataset):
    """Item (index, epoch) -> (uint8 crop [3,S,S], cached tokens [L] or an empty tensor).

    With `token_cache` (a `TokenCache`), the crop is one of the cache's K fixed crops, picked
    per (epoch, index), and its precomputed VQGAN tokens come with it.
    """

    def __init__(self, files: list, size: int = 224, scale=(0.2, 1.0), seed: int = 0,
                 token_cache: "TokenCache | None" = None):
        self.files, self.size, self.scale, self.seed = list(files), size, tuple(scale), seed
        self.token_cache = token_cache

    def __len__(self):
        return len(self.files)

    def crop(self, index: int, variant: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index, variant])
        for attempt in range(len(self.files)):  # a bad file is replaced by the next good one
            f = self.files[(index + attempt) % len(self.files)]
            try:
                with Image.open(io.BytesIO(f.read()) if isinstance(f, TarMember) else f) as img:
                    return augment(img.convert("RGB"), rng, self.size, self.scale)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                warnings.warn(f"skipping unreadable image {f}: {e}")
        raise RuntimeError("no readable image in the dataset")

    def __getitem__(self, item):
        index, epoch = item
        if self.token_cache is None:
            return self.crop(index, epoch), torch.empty(0, dtype=torch.long)
        k = int(np.random.default_rng([self.seed, epoch, index, 1]).integers(self.token_cache.crops_per_image))
        return self.crop(index, k), self.token_cache.tokens(index, k)


class ResumableSampler(Sampler):
    """This rank's share of an epoch's permutation, from position `start` on.

    Yields (index, epoch) items. Every rank gets the same count (the remainder is dropped), so
    DDP ranks stay in step.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if num_items < world_size:
            raise ValueError(f"{num_items} images cannot be split over {world_size} ranks")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = num_items // world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.per_rank - self.start

    def __iter__(self):
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        mine = order[self.rank::self.world_size][: self.per_rank]
        for i in mine[self.start:]:
            yield int(i), self.epoch


class MixtureSampler(ResumableSampler):
    """Several sources drawn with weights: this rank's share of an epoch, from `start` on.

    `sizes[i]` images of source i lie at global indices offset_i .. offset_i + sizes[i] - 1 (the
    sources concatenated in order). An epoch holds sum(sizes) draws (as many as the data has
    images), source i getting a share weights[i] / sum(weights) of them. Each source is walked
    through its own endless stream of permutations (seeded by (seed, source, pass)), so it repeats
    an image only after showing all of them, whatever the weights. The draws of an epoch are
    shuffled together by (seed, epoch); everything is a pure function of (seed, epoch), so a
    resume is exact. Yields (global index, pass over that source): the pass picks a fresh crop.
    """

    def __init__(self, sizes: list[int], weights: list[float], rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        if len(sizes) != len(weights) or any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"weights {weights} do not fit {len(sizes)} sources (one per source, "
                             ">= 0, not all 0)")
        if any(n == 0 for n, w in zip(sizes, weights) if w > 0):
            raise ValueError("a source with a weight above 0 has no images")
        super().__init__(sum(sizes), rank, world_size, seed)
        self.sizes, self.weights = list(sizes), [float(w) for w in weights]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)

    def draws_per_epoch(self) -> list[int]:
        """Draws of each source in one epoch: shares of sum(sizes), largest remainders rounded up."""
        total = self.num_items
        exact = np.array(self.weights) / sum(self.weights) * total
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
            counts[i] += 1
        return [int(c) for c in counts]

    def source_draws(self, source: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions first .. first+count-1 of a source's stream -> (local indices, passes)."""
        n = self.sizes[source]
        positions = np.arange(first, first + count)
        passes = positions // n
        local = np.empty(count, dtype=np.int64)
        for p in np.unique(passes):
            perm = np.random.default_rng([self.seed, source, int(p), 7]).permutation(n)
            sel = passes == p
            local[sel] = perm[positions[sel] % n]
        return local, passes

    def __iter__(self):
        counts = self.draws_per_epoch()
        index, variant = [], []
        for s, c in enumerate(counts):
            if c:
                local, passes = self.source_draws(s, self.epoch * c, c)
                index.append(local + self.offsets[s])
                variant.append(passes)
        index, variant = np.concatenate(index), np.concatenate(variant)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(index))
        mine = order[self.rank::self.world_size][: self.per_rank]
        for j in mine[self.start:]:
            yield int(index[j]), int(variant[j])


# -- cached tokens ---------------------------------------------------------------------------

class TokenCache:
    """VQGAN tokens of K fixed crops per image: `tokens.npy` [N, K, L] uint16 + `meta.json`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.crops_per_image = int(self.meta["crops_per_image"])
        self._array = None  # opened lazily, so that each DataLoader worker maps it itself

    @staticmethod
    def exists(folder) -> bool:
        return (Path(folder) / "meta.json").is_file()

    def check(self, files, size, scale, seed, n_embed):
        expected = {"fingerprint": fingerprint(files), "num_images": len(files), "size": size,
                    "scale": list(scale), "seed": seed, "n_embed": n_embed}
        wrong = {k: (self.meta.get(k), v) for k, v in expected.items() if self.meta.get(k) != v}
        if wrong:
            raise ValueError(f"token cache {self.folder} was built for other data or settings "
                             f"(cached vs now: {wrong}); delete it or point --token-cache elsewhere")

    def tokens(self, index: int, k: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.load(self.folder / "tokens.npy", mmap_mode="r")
        return torch.from_numpy(self._array[index, k].astype(np.int64))


# -- tar shards ------------------------------------------------------------------------------

def pack_shards(files: list[Path], out, shard_size: int = 10_000, max_side: int | None = None,
                jpeg_quality: int | None = None, progress: bool = True) -> list[Path]:
    """Copy images into `out/shard-NNNNNN.tar`, `shard_size` per shard, member i named
    `<i:09d><suffix>` in list order.

    By default the bytes are unchanged. `max_side` shrinks larger images (Pillow thumbnail,
    bicubic) and `jpeg_quality` re-encodes as JPEG: decoding is what limits the loader at
    thousands of img/s, and a 512-px JPEG decodes several times faster than a 1024-px PNG.
    Each shard is written to a temp file and renamed, so a rerun skips the shards already there.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in tqdm(range(0, len(files), shard_size), desc="packing", unit="shard", disable=not progress):
        shard = out / f"shard-{start // shard_size:06d}.tar"
        shards.append(shard)
        if shard.is_file():
            continue

        def write(fh, first=start):
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as t:
                for i, f in enumerate(files[first:first + shard_size], first):
                    data, suffix = image_bytes(f, max_side, jpeg_quality)
                    info = tarfile.TarInfo(f"{i:09d}{suffix}")
                    info.size = len(data)  # mtime/uid 0: the same images give the same bytes
                    t.addfile(info, io.BytesIO(data))
        atomic_write(shard, write)
    return shards


def image_bytes(f: Path, max_side: int | None, jpeg_quality: int | None) -> tuple[bytes, str]:
    """The file's bytes, or a shrunk / re-encoded copy when asked (and needed)."""
    if max_side is None and jpeg_quality is None:
        return f.read_bytes(), f.suffix.lower()
    with Image.open(f) as img:
        if max_side is not None and max(img.size) <= max_side and jpeg_quality is None:
            return f.read_bytes(), f.suffix.lower()
        img = img.convert("RGB")
        if max_side is not None:
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        if jpeg_quality is not None:
            img.save(buf, "JPEG", quality=jpeg_quality)
            return buf.getvalue(), ".jpg"
        img.save(buf, "PNG")
        return buf.getvalue(), ".png"


def jpeg_quality(text: str) -> int:
    """argparse type: a JPEG quality Pillow accepts, 1 to 95."""
    value = cli.positive_int(text)
    if value > 95:
        raise cli.ArgumentTypeError(f"{value}: give 1 to 95 (Pillow's highest useful quality)")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m model.data",
        description="Pack the images of a folder or manifest into tar shards for training "
                    "(`python -m model.train SHARD_FOLDER` reads them).")
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser(
        "pack", help="write WebDataset-style tar shards",
        description="Copy the images into OUT/shard-NNNNNN.tar (few big files read faster than many "
                    "small ones). A rerun keeps the shards already written. Example: python -m "
                    "model.data pack manifests/<name>/train.parquet --images $CVF_DATA/images "
                    "--out shards/train")
    pk.add_argument("source", help="image folder, or manifest (.parquet/.jsonl/official .csv)")
    pk.add_argument("--images", type=cli.existing_dir, help="folder the manifest's images were rebuilt into (manifests only)")
    pk.add_argument("--split", help="keep only the manifest rows of this split (default: every row)")
    pk.add_argument("--out", required=True, type=cli.writable_dir, help="folder for shard-NNNNNN.tar")
    pk.add_argument("--shard-size", type=cli.positive_int, default=10_000, help="images per shard (default: 10000)")
    pk.add_argument("--max-side", type=cli.positive_int, help="shrink images whose longer side exceeds this (e.g. 512)")
    pk.add_argument("--jpeg-quality", type=jpeg_quality, help="re-encode as JPEG at this quality, 1-95 (e.g. 95)")
    args = p.parse_args(argv)
    with cli.exit_on(ValueError, OSError):  # a wrong path or manifest, an unwritable --out: one line
        files = list_images(args.source, args.images, args.split)
        shards = pack_shards(files, args.out, args.shard_size, args.max_side, args.jpeg_quality)
    print(f"{len(files)} images in {len(shards)} shards under {args.out}")


if __name__ == "__main__":
    main()
