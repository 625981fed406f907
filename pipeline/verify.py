"""Check a published manifest, and optionally a folder of images against it.

    python -m pipeline.verify manifests/cvf-2026.11
    python -m pipeline.verify manifests/cvf-2026.11 --images data/images

1. Every file `croissant.json` lists must exist with the listed sha256 (missing or altered
   manifest files are reported by name).
2. With `--images DIR`: every figure of `train.parquet`/`val.parquet` must be in DIR with the
   listed sha256 and width x height. A figure is looked for at `DIR/<image_path>` (the layout
   extraction writes), then `DIR/<split>/<paper_id>/<file>` (the official layout, which
   `python -m pipeline.rebuild --out DIR` writes), `DIR/<paper_id>/<file>` and `DIR/<file>` (the
   official downloader's flat folder), `<file>` being the official output name. `--split val`
   checks one split only (e.g. after rebuilding only `df_val.csv`).
3. An image whose sha256 differs but whose size matches is `near` when its perceptual hash
   (computed as extraction does) is within extraction's near-duplicate distance of the
   manifest's `phash`: the same picture, pixels differ slightly (another PyMuPDF or Pillow
   version renders a few pixels differently). Near images are listed with their bit distance
   and are not problems, unless `--strict` (byte-identical images required).

Every path the manifest names (a contentUrl, a row's image_path, paper_id or img_name) is read
only inside the manifest folder (or the image folder), after `..` and links are resolved; one
that leads out is a problem named in one line, and is not opened. A row of the wrong types is a
problem too; nothing a manifest holds makes verify raise, or pass unchecked.

Exit status 0 when everything matches (exactly or near), 1 when anything is missing, differs,
leads out or cannot be checked, or `croissant.json` is no manifest's (not JSON, not an object,
no data files, a file without its contentUrl or sha256, a split's Parquet file not listed or
unreadable: one `error:` line), 2 when the manifest folder, its croissant.json or the image
folder is not there.
"""
from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from model import cli
from pipeline import store
from pipeline.near_duplicates import NEAR_DUP_BITS, phash_bits, png_phash
from pipeline.naming import output_name

SPLITS = ("train", "val")


class ManifestError(ValueError):
    """croissant.json is not a usable manifest description: nothing can be checked against it."""


def croissant_problem(meta) -> str:
    """Why a parsed croissant.json cannot describe a manifest ('' when it can): it must be an
    object whose `distribution` lists the data files, each with `contentUrl` and `sha256`,
    the splits' Parquet files among them. An empty `{}` lists nothing and checks nothing."""
    if not isinstance(meta, dict):
        return f"not a JSON object (a JSON {type(meta).__name__})"
    distribution = meta.get("distribution")
    if not isinstance(distribution, list) or not distribution:
        return "lists no data files (no `distribution`)"
    for i, obj in enumerate(distribution):
        if not isinstance(obj, dict):
            return f"distribution entry {i} is not an object"
        if obj.get("@type") == "cr:FileSet":  # FileSets have no checksum of their own
            continue
        for key in ("contentUrl", "sha256"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                return f"distribution entry {i} ({obj.get('name') or obj.get('@id') or '?'}) has no {key}"
    listed = {obj["contentUrl"] for obj in distribution if obj.get("@type") != "cr:FileSet"}
    if lacking := [f"{s}.parquet" for s in SPLITS if f"{s}.parquet" not in listed]:
        return f"incomplete: {', '.join(lacking)} not listed"
    return ""


def manifest_path(fs, root: str, rel) -> str | None:
    """Where the manifest file `rel` (a contentUrl) lies under the manifest folder `root`, or None
    when it leaves the folder: an absolute path or URL, `..`, or (on a local disk) a link out of it.
    A tampered manifest must not make verify read, and vouch for, a file outside it."""
    if not isinstance(rel, str) or not rel or "://" in rel or rel.startswith(("/", "\\")) or "\0" in rel:
        return None
    if _is_local(fs):
        base = os.path.realpath(root)
        path = os.path.realpath(os.path.join(base, rel))
        return path if path != base and path.startswith(base + os.sep) else None
    path = posixpath.normpath(f"{root.rstrip('/')}/{rel}")
    return path if path.startswith(root.rstrip("/") + "/") else None


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def check_manifest_files(manifest: str) -> tuple[list[dict], dict]:
    """(problems, croissant) for the manifest folder `manifest` (a path or fsspec URL).
    Raises ManifestError when croissant.json is not a manifest's (`croissant_problem`), and
    FileNotFoundError when the folder or its croissant.json is not there (nothing to check)."""
    fs, root = fsspec.core.url_to_fs(manifest)
    if not fs.isdir(root):
        raise FileNotFoundError(f"manifest folder not found: {manifest} (publish one with `python -m pipeline.publish`)")
    meta_path = f"{root}/croissant.json"
    if not fs.exists(meta_path):
        raise FileNotFoundError(f"{manifest} holds no croissant.json, so it is no published manifest and nothing "
                                f"can be checked (publish one with `python -m pipeline.publish`)")
    try:
        meta = json.loads(fs.cat_file(meta_path))
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested deeper than Python recurses
        raise ManifestError(f"{manifest}/croissant.json: not JSON that can be read: "
                            f"{str(e)[:200] or type(e).__name__}") from None
    if problem := croissant_problem(meta):
        raise ManifestError(f"{manifest}/croissant.json: {problem}")
    problems = []
    for obj in meta["distribution"]:
        if obj.get("@type") == "cr:FileSet":
            continue
        path = manifest_path(fs, root, obj["contentUrl"])
        if path is None:
            problems.append({"file": obj["contentUrl"], "problem": "outside the manifest folder: refused, not read"})
            continue
        try:
            if not fs.exists(path):
                problems.append({"file": obj["contentUrl"], "problem": "missing"})
            elif not fs.isfile(path):
                problems.append({"file": obj["contentUrl"], "problem": "not a file"})
            elif store.sha256_bytes(fs.cat_file(path)) != obj["sha256"]:
                problems.append({"file": obj["contentUrl"], "problem": "altered (sha256 differs from croissant.json)"})
        except OSError as e:
            problems.append({"file": obj["contentUrl"], "problem": f"unreadable: {e}"})
    return problems, meta


# The types a manifest row must have for its image to be checked; anything else is a problem row.
ROW_TYPES = {"paper_id": str, "img_name": str, "sha256": str, "width": int, "height": int}


def read_manifest_rows(manifest: str, splits: tuple[str, ...] = SPLITS) -> list[dict]:
    """The manifest's figures; `phash` is None in manifests published before it was a column.
    Raises ManifestError when a split's Parquet file cannot be read or lacks a column."""
    fs, root = fsspec.core.url_to_fs(manifest)
    rows = []
    for split in splits:
        try:
            with fs.open(f"{root}/{split}.parquet", "rb") as f:
                table = pq.read_table(f)
        except (OSError, pa.ArrowException) as e:
            raise ManifestError(f"{split}.parquet: not a readable Parquet file: {e}") from None
        if lacking := [c for c in ROW_TYPES if c not in table.column_names]:
            raise ManifestError(f"{split}.parquet: no column {', '.join(lacking)}")
        columns = ["paper_id", "img_name", "sha256", "width", "height", "image_path", "phash"]
        table = table.select([c for c in columns if c in table.column_names])
        rows += [{"phash": None, "image_path": None, **r, "split": split} for r in table.to_pylist()]
    return rows


def row_problem(row: dict) -> str:
    """Why a manifest row cannot be checked ('' when it can): a column of the wrong type."""
    for column, kind in ROW_TYPES.items():
        value = row.get(column)
        if value == "":
            return f"{column} is empty"
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{column} is {type(value).__name__} {str(value)[:40]!r}, not a {kind.__name__}"
    for column in ("image_path", "phash"):
        if row.get(column) is not None and not isinstance(row[column], str):
            return f"{column} is {type(row[column]).__name__}, not text"
    return ""


def candidate_paths(row: dict) -> list[str]:
    """Where each layout puts the row's image, relative to the image folder."""
    name = output_name(row["paper_id"], row["img_name"])
    candidates = [row["split"] + "/" + row["paper_id"] + "/" + name, row["paper_id"] + "/" + name, name]
    return ([row["image_path"]] if row.get("image_path") else []) + candidates


def inside(base: str, rel: str) -> str | None:
    """`base/rel` with `..` and links resolved, or None when that leaves the folder `base`."""
    if "\0" in rel or rel.startswith("/"):
        return None
    path = os.path.realpath(os.path.join(base, rel))
    return path if path.startswith(base + os.sep) else None


def locate(images: Path, row: dict) -> Path | None:
    """The row's image in `images`; a candidate that leaves the folder (`..` or a link out in
    image_path, paper_id or img_name) is never opened."""
    base = os.path.realpath(images)
    for rel in candidate_paths(row):
        if (path := inside(base, rel)) is not None and os.path.isfile(path):
            return Path(path)
    return None


NEAR_MEANING = "same picture, pixels differ slightly: another renderer version"


def check_image(images: Path, row: dict, strict: bool = False) -> dict:
    """How the figure's PNG in `images` compares with the manifest row: `result` is `ok` (same
    sha256), `near` (same size, perceptual hash within NEAR_DUP_BITS: `bits` says how far) or
    `problem` (with `problem` saying what; a near image is one under `strict`)."""
    key = f"{row.get('paper_id')}/{row.get('img_name')}"
    if problem := row_problem(row):
        return {"figure": key, "result": "problem", "problem": f"manifest row of wrong types: {problem}"}
    path = locate(images, row)
    if path is None:
        base = os.path.realpath(images)
        if leaving := [rel for rel in candidate_paths(row) if inside(base, rel) is None]:
            return {"figure": key, "result": "problem",
                    "problem": f"its path leads outside the image folder: {leaving[0]!r} refused, not read"}
        return {"figure": key, "result": "problem", "problem": "missing"}
    found = {"figure": key, "path": str(path)}
    try:
        with Image.open(path) as im:
            size = im.size
    except OSError as e:
        return {**found, "result": "problem", "problem": f"unreadable: {e}"}
    if size != (row["width"], row["height"]):
        return {**found, "result": "problem", "problem": f"size {size[0]}x{size[1]}, listed {row['width']}x{row['height']}"}
    if store.sha256_file(path) == row["sha256"]:
        return {**found, "result": "ok"}
    if not row.get("phash"):
        return {**found, "result": "problem", "problem": "sha256 differs (the manifest has no phash to compare pixels)"}
    try:
        bits = phash_bits(png_phash(path), row["phash"])
    except OSError as e:
        return {**found, "result": "problem", "problem": f"unreadable: {e}"}
    if bits > NEAR_DUP_BITS:
        return {**found, "result": "problem", "bits": bits,
                "problem": f"sha256 differs and so does the picture (perceptual hash {bits} bits away)"}
    if strict:
        return {**found, "result": "problem", "bits": bits,
                "problem": f"sha256 differs; near ({NEAR_MEANING}; perceptual hash {bits} bits away), refused by --strict"}
    return {**found, "result": "near", "bits": bits}


def checked_image(images: Path, row: dict, strict: bool = False) -> dict:
    """`check_image`, with whatever a hostile row or file raises reported as that row's problem."""
    try:
        return check_image(images, row, strict)
    except (OSError, ValueError, TypeError, KeyError, OverflowError) as e:
        return {"figure": f"{row.get('paper_id')}/{row.get('img_name')}", "result": "problem",
                "problem": f"could not be checked: {type(e).__name__}: {str(e)[:200]}"}


def verify(manifest: str, images: str | Path | None = None, threads: int = 4,
           splits: tuple[str, ...] = SPLITS, strict: bool = False) -> dict:
    """The report: `manifest_problems`; with `images`, `figures`, `ok` (same sha256), `near` (same
    picture, pixels differ slightly; listed in `near_figures` with their bit distance) and
    `image_problems`. `strict`: near images are problems. `ok_overall`: no problem at all."""
    problems, meta = check_manifest_files(manifest)
    report = {"manifest": manifest, "name": meta.get("name"), "manifest_problems": problems}
    if images is not None and not any(p["file"].endswith(".parquet") for p in problems):
        images = Path(images)
        if not images.is_dir():
            raise FileNotFoundError(f"image folder not found: {images}")
        rows = read_manifest_rows(manifest, splits)
        with ThreadPoolExecutor(threads) as pool:  # hashing releases the GIL
            results = list(tqdm(pool.map(lambda r: checked_image(images, r, strict), rows), total=len(rows),
                                desc="verify images", unit="img", disable=None))
        near = [{k: r[k] for k in ("figure", "path", "bits")} for r in results if r["result"] == "near"]
        bad = [{k: v for k, v in r.items() if k != "result"} for r in results if r["result"] == "problem"]
        report.update(images=str(images), figures=len(rows), strict=strict,
                      ok=sum(r["result"] == "ok" for r in results), near=len(near), near_figures=near,
                      near_means=NEAR_MEANING, image_problems=bad)
    report["ok_overall"] = not problems and not report.get("image_problems")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("manifest", help="manifest folder (path or fsspec URL), e.g. manifests/cvf-2026.11")
    p.add_argument("--images", type=cli.existing_dir, help="folder of images to check against the manifest")
    p.add_argument("--split", choices=SPLITS, help="check the images of this split only (default: both)")
    p.add_argument("--strict", action="store_true",
                   help="require byte-identical images: a near image (same picture, pixels differ slightly, "
                        "e.g. rendered by another PyMuPDF/Pillow version) counts as a mismatch")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = p.parse_args(argv)
    try:
        report = verify(args.manifest, args.images, splits=(args.split,) if args.split else SPLITS,
                        strict=args.strict)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError) as e:  # an fsspec URL of an unknown or unreachable kind
        print(f"error: {args.manifest}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for prob in report["manifest_problems"]:
            print(f"manifest file {prob['file']}: {prob['problem']}")
        for prob in report.get("image_problems", [])[:50]:
            print(f"image {prob['figure']}: {prob['problem']}")
        for near in report.get("near_figures", [])[:50]:
            print(f"image {near['figure']}: near, perceptual hash {near['bits']} bits away")
        if "figures" in report:
            print(f"{report['ok']} of {report['figures']} images match exactly")
            if report["near"]:
                print(f"{report['near']} images are near: {NEAR_MEANING} (a perceptual hash within "
                      f"{NEAR_DUP_BITS} bits); not a mismatch unless --strict")
        print("OK" if report["ok_overall"] else "MISMATCHES FOUND")
    if not report["ok_overall"]:  # the one line a script reads: what failed, in numbers
        counts = [f"{len(report['manifest_problems'])} manifest files"] if report["manifest_problems"] else []
        if report.get("image_problems"):
            counts.append(f"{len(report['image_problems'])} images")
        if args.strict and report.get("near"):
            counts.append(f"{report['near']} near images (--strict)")
        print(f"error: {args.manifest} did not verify: {', '.join(counts) or 'see above'}", file=sys.stderr)
    return 0 if report["ok_overall"] else 1


if __name__ == "__main__":
    sys.exit(main())
