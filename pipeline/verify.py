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

Exit status 0 when everything matches (exactly or near), 1 when anything is missing or differs
or `croissant.json` is no manifest's (not JSON, not an object, no data files, a file without
its contentUrl or sha256, a split's Parquet file not listed: one `error:` line), 2 when the
manifest or image folder is not there.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

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


def check_manifest_files(manifest: str) -> tuple[list[dict], dict]:
    """(problems, croissant) for the manifest folder `manifest` (a path or fsspec URL).
    Raises ManifestError when croissant.json is not a manifest's (`croissant_problem`)."""
    fs, root = fsspec.core.url_to_fs(manifest)
    if not fs.isdir(root):
        raise FileNotFoundError(f"manifest folder not found: {manifest} (publish one with `python -m pipeline.publish`)")
    meta_path = f"{root}/croissant.json"
    if not fs.exists(meta_path):
        return [{"file": "croissant.json", "problem": "missing"}], {}
    try:
        meta = json.loads(fs.cat_file(meta_path))
    except ValueError as e:
        raise ManifestError(f"{manifest}/croissant.json: not JSON: {e}") from None
    if problem := croissant_problem(meta):
        raise ManifestError(f"{manifest}/croissant.json: {problem}")
    problems = []
    for obj in meta["distribution"]:
        if obj.get("@type") == "cr:FileSet":
            continue
        path = f"{root}/{obj['contentUrl']}"
        if not fs.exists(path):
            problems.append({"file": obj["contentUrl"], "problem": "missing"})
        elif store.sha256_bytes(fs.cat_file(path)) != obj["sha256"]:
            problems.append({"file": obj["contentUrl"], "problem": "altered (sha256 differs from croissant.json)"})
    return problems, meta


def read_manifest_rows(manifest: str, splits: tuple[str, ...] = SPLITS) -> list[dict]:
    """The manifest's figures; `phash` is None in manifests published before it was a column."""
    fs, root = fsspec.core.url_to_fs(manifest)
    rows = []
    for split in splits:
        with fs.open(f"{root}/{split}.parquet", "rb") as f:
            table = pq.read_table(f)
        columns = ["paper_id", "img_name", "sha256", "width", "height", "image_path", "phash"]
        table = table.select([c for c in columns if c in table.column_names])
        rows += [{"phash": None, **r, "split": split} for r in table.to_pylist()]
    return rows


def locate(images: Path, row: dict) -> Path | None:
    name = output_name(row["paper_id"], row["img_name"])
    for candidate in (images / (row["image_path"] or "\0"), images / row["split"] / row["paper_id"] / name,
                      images / row["paper_id"] / name, images / name):
        if candidate.is_file():
            return candidate
    return None


NEAR_MEANING = "same picture, pixels differ slightly: another renderer version"


def check_image(images: Path, row: dict, strict: bool = False) -> dict:
    """How the figure's PNG in `images` compares with the manifest row: `result` is `ok` (same
    sha256), `near` (same size, perceptual hash within NEAR_DUP_BITS: `bits` says how far) or
    `problem` (with `problem` saying what; a near image is one under `strict`)."""
    key = f"{row['paper_id']}/{row['img_name']}"
    path = locate(images, row)
    if path is None:
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
            results = list(tqdm(pool.map(lambda r: check_image(images, r, strict), rows), total=len(rows),
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
    p.add_argument("--images", help="folder of images to check against the manifest")
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
    return 0 if report["ok_overall"] else 1


if __name__ == "__main__":
    sys.exit(main())
