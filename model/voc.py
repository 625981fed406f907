"""PASCAL VOC 2012 for the paper's evaluations: Pascal-5i folds and single-object detection.

A VOC root is either `VOCdevkit/VOC2012` itself or a folder holding it (the released layout,
`<data>/VOCdevkit/VOC2012/...`). Used folders: `JPEGImages/`, `SegmentationClassAug/`
(class-index PNGs, 0 background, 1..20 classes, 255 boundary; the SBD-augmented masks used by
every Pascal-5i paper), `Annotations/` (XML, detection), `ImageSets/Segmentation/val.txt` and
`ImageSets/Main/{train,val}.txt`.

Pascal-5i fold k holds classes 5k+1..5k+5. Its lists are the standard ones by default: the
released `evaluate/splits/pascal/{trn,val}/fold{k}.txt` ship with this package
(`model/splits/pascal/`, byte-identical; they are lists of VOC ids and classes). The released
sampler walks the val list in order, so only these lists give the released episodes.
`splits="derived"` instead derives the val list from the masks: every (image, class) pair of a
VOC 2012 segmentation-val image whose mask holds at least 2*32*32 pixels of that class (PFENet's
rule; it misses or adds a few pairs per fold against the standard lists, which
`python -m model.voc --check DIR` reports). `splits=DIR` reads DIR/{trn,val}/fold{k}.txt.

    python -m model.voc --data /data/pascal --write-splits splits/ --check model/splits/pascal

"""
from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model import cli

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
N_FOLDS = 4
MIN_PIXELS = 2 * 32 * 32
# The released Pascal-5i lists, shipped as package data.
STANDARD_SPLITS = Path(__file__).resolve().parent / "splits" / "pascal"
# Released code keeps single objects covering under 20% of the image; the paper's text says
# objects over 50% were filtered.
MAX_OBJECT_AREA = {"code": 0.2, "paper": 0.5}


class VocError(ValueError):
    """The VOC root is not usable: says which folder, file or image is wrong."""


def voc_root(path: str | Path) -> Path:
    """The folder holding JPEGImages/: `path` itself or `path/VOCdevkit/VOC2012`."""
    path = Path(path)
    for candidate in (path, path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise VocError(f"{path} is not a VOC 2012 root: no JPEGImages/ in it or in "
                   f"{path / 'VOCdevkit' / 'VOC2012'}")


def require(root: Path, *folders: str) -> None:
    for folder in folders:
        if not (root / folder).is_dir():
            hint = (" (the SBD-augmented class masks, e.g. from the HSNet/visual_prompting setup)"
                    if folder == "SegmentationClassAug" else "")
            raise VocError(f"VOC root {root} is missing the folder {folder}/{hint}")


def read_ids(root: Path, list_file: str) -> list[str]:
    """Image ids of an ImageSets list, e.g. 'Segmentation/val' or 'Main/train'."""
    path = root / "ImageSets" / f"{list_file}.txt"
    if not path.is_file():
        raise VocError(f"VOC root {root} is missing the image list {path.relative_to(root)}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def image_path(root: Path, image_id: str) -> Path:
    path = root / "JPEGImages" / f"{image_id}.jpg"
    if not path.is_file():
        raise VocError(f"VOC root {root} is missing the image JPEGImages/{image_id}.jpg")
    return path


def read_image(root: Path, image_id: str) -> Image.Image:
    path = image_path(root, image_id)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as e:            # truncated or not an image at all
        raise VocError(f"{path} cannot be read as an image: {e}") from None


def read_mask(root: Path, image_id: str, check_size: bool = True) -> np.ndarray:
    """Class-index mask [H,W] uint8 from SegmentationClassAug, checked against its image size."""
    path = root / "SegmentationClassAug" / f"{image_id}.png"
    if not path.is_file():
        raise VocError(f"VOC root {root} is missing the mask SegmentationClassAug/{image_id}.png")
    with Image.open(path) as m:
        if m.mode not in ("P", "L"):
            raise VocError(f"{path} is a {m.mode} image; expected class indices (mode P or L)")
        mask = np.array(m)
    if check_size:
        with Image.open(image_path(root, image_id)) as img:
            size = img.size
        if mask.shape[::-1] != size:
            raise VocError(f"{path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{size[0]}x{size[1]}")
    return mask


def check_images(root: Path, image_ids, masks: bool = False) -> None:
    """Every image (and with `masks`, its class mask, of the same size) is there and readable as
    an image, checked from the file headers before any episode runs: a bad root fails at once
    with its own message, not later from inside a DataLoader worker."""
    for image_id in dict.fromkeys(image_ids):
        path = image_path(root, image_id)
        try:
            with Image.open(path) as img:
                size = img.size
        except OSError as e:
            raise VocError(f"{path} cannot be read as an image: {e}") from None
        if masks:
            mask = root / "SegmentationClassAug" / f"{image_id}.png"
            if not mask.is_file():
                raise VocError(f"VOC root {root} is missing the mask SegmentationClassAug/{image_id}.png")
            with Image.open(mask) as m:
                if m.size != size:
                    raise VocError(f"{mask} is {m.size[0]}x{m.size[1]} but its image is "
                                   f"{size[0]}x{size[1]}")


# ----------------------------------------------------------------------------- Pascal-5i

def fold_classes(fold: int) -> list[int]:
    """VOC class ids (1..20) of Pascal-5i fold `fold`."""
    if fold not in range(N_FOLDS):
        raise ValueError(f"fold must be 0..3, got {fold}")
    per_fold = len(VOC_CLASSES) // N_FOLDS
    return [fold * per_fold + i + 1 for i in range(per_fold)]


def derive_fold_list(root: Path, fold: int, image_ids: list[str],
                     min_pixels: int = MIN_PIXELS) -> list[tuple[str, int]]:
    """(image id, class id) for every image with >= min_pixels of a fold class, sorted."""
    classes = fold_classes(fold)
    pairs = []
    for image_id in sorted(image_ids):
        counts = np.bincount(read_mask(root, image_id, check_size=False).ravel(), minlength=256)
        pairs += [(image_id, c) for c in classes if counts[c] >= max(min_pixels, 1)]
    return pairs


def pascal5i_val_list(data: str | Path, fold: int) -> list[tuple[str, int]]:
    """The fold's val list derived from VOC 2012 segmentation val (1,449 images)."""
    root = voc_root(data)
    require(root, "JPEGImages", "SegmentationClassAug")
    return derive_fold_list(root, fold, read_ids(root, "Segmentation/val"))


def read_fold_file(path: str | Path) -> list[tuple[str, int]]:
    """A standard Pascal-5i list ('2007_000033__01' per line)."""
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                image_id, cls = line.strip().split("__")
                pairs.append((image_id, int(cls)))
            except ValueError:
                raise VocError(f"{path} line {n}: {line.strip()!r} is not '<voc id>__<class>'") from None
    return pairs


def split_file(splits: str | Path, split: str, fold: int) -> Path:
    """DIR/{trn,val}/fold{k}.txt of a splits folder, or a VocError naming the missing file."""
    fold_classes(fold)                       # checks the fold
    path = Path(splits) / split / f"fold{fold}.txt"
    if not path.is_file():
        raise VocError(f"the splits folder {splits} has no {split}/fold{fold}.txt (a Pascal-5i "
                       f"splits folder holds trn/ and val/ with fold0.txt .. fold3.txt, lines "
                       f"'<voc id>__<class>')")
    return path


def check_split_dir(splits: str | Path) -> None:
    """Every val fold file of a --splits DIR is there (checked before any fold runs)."""
    for fold in range(N_FOLDS):
        split_file(splits, "val", fold)


def fold_list(data: str | Path | None, fold: int, split: str = "val",
              splits: str | Path = "standard") -> list[tuple[str, int]]:
    """(image id, class) pairs of Pascal-5i fold `fold`, in the list's order.

    splits 'standard': the released lists shipped with cvf; 'derived': the val list derived
    from the masks under `data` (no trn list can be derived); a folder: its own lists.
    """
    if split not in ("val", "trn"):
        raise ValueError(f"split must be val or trn, got {split!r}")
    if str(splits) == "derived":
        if split != "val":
            raise VocError("--splits derived derives only the val lists; the trn pool needs the "
                           "standard lists (--splits standard or a folder), or use --support-pool val")
        return pascal5i_val_list(data, fold)
    folder = STANDARD_SPLITS if str(splits) == "standard" else Path(splits)
    pairs = read_fold_file(split_file(folder, split, fold))
    allowed = set(fold_classes(fold))
    strangers = sorted({c for _, c in pairs} - allowed)
    if strangers:
        raise VocError(f"{split_file(folder, split, fold)} holds classes {strangers}, not of fold "
                       f"{fold} (classes {sorted(allowed)})")
    return pairs


def format_fold_list(pairs: list[tuple[str, int]]) -> str:
    return "".join(f"{image_id}__{cls:02d}\n" for image_id, cls in pairs)


def compare_fold_lists(derived, standard, image_ids=None) -> dict[str, list]:
    """Pairs only one side has; with `image_ids`, the standard list is restricted to them."""
    derived, standard = set(derived), set(standard)
    if image_ids is not None:
        standard = {p for p in standard if p[0] in set(image_ids)}
    return {"missing": sorted(standard - derived), "extra": sorted(derived - standard)}


# ----------------------------------------------------------------------------- detection

@dataclass(frozen=True)
class VocObject:
    image_id: str
    cls: int                                  # 1..20
    box: tuple[float, float, float, float]    # x0, y0, x1, y1 in pixels, 0-based (release)
    width: int
    height: int

    @property
    def area_fraction(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0) / (self.width * self.height)


def read_objects(root: Path, image_id: str) -> list[VocObject]:
    """Objects of an Annotations XML (difficult ones included, as the release does)."""
    path = root / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise VocError(f"VOC root {root} is missing the annotation Annotations/{image_id}.xml")
    tree = ET.parse(path).getroot()
    width = int(tree.findtext("size/width"))
    height = int(tree.findtext("size/height"))
    objects = []
    for obj in tree.iter("object"):
        name = obj.findtext("name").strip()
        if name not in VOC_CLASSES:
            raise VocError(f"{path}: unknown class {name!r}")
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        # VOC boxes are 1-based inclusive; the release shifts the top-left corner by one.
        objects.append(VocObject(image_id, VOC_CLASSES.index(name) + 1,
                                 (x0 - 1, y0 - 1, x1, y1), width, height))
    return objects


def single_object_set(root: Path, image_ids: list[str], area_filter: str = "code") -> list[VocObject]:
    """Images with exactly one object, that object kept when small enough.

    area_filter 'code' keeps objects under 20% of the image (the released code), 'paper' drops
    objects over 50% (the paper's text), 'none' keeps all.
    """
    limit = MAX_OBJECT_AREA.get(area_filter, float("inf"))
    if area_filter not in (*MAX_OBJECT_AREA, "none"):
        raise ValueError(f"area_filter must be code, paper or none, got {area_filter!r}")
    kept = []
    for image_id in image_ids:
        objects = read_objects(root, image_id)
        if len(objects) != 1:
            continue
        frac = objects[0].area_fraction
        if (area_filter == "code" and frac < limit) or (area_filter != "code" and frac <= limit):
            kept.append(objects[0])
    return kept


def box_target(obj: VocObject) -> Image.Image:
    """The detection target: the box filled white on black, at the image's size."""
    target = np.zeros((obj.height, obj.width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in obj.box)
    target[y0:y1, x0:x1] = 255
    return Image.fromarray(target)


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.voc",
        description="Derive the Pascal-5i val fold lists (image id, class pairs) from a VOC 2012 root\n"
                    "and check them against the standard lists. Prints per fold how many pairs were\n"
                    "derived and, with --check, how many standard pairs are missing and how many are\n"
                    "extra. Exits 1 when any fold differs, 2 on a bad root or list.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m model.voc --data /data/pascal --check "
               "--write-splits /tmp/derived\n(--check alone compares with the released lists shipped "
               "with cvf)")
    parser.add_argument("--data", required=True, type=cli.existing_dir,
                        help="VOC root (VOCdevkit/VOC2012 or a folder holding VOCdevkit/)")
    parser.add_argument("--write-splits", metavar="DIR", type=cli.writable_dir,
                        help="write DIR/val/fold{0..3}.txt in the standard format")
    parser.add_argument("--check", metavar="DIR", nargs="?", const=str(STANDARD_SPLITS),
                        help="standard lists (DIR/val/fold{0..3}.txt) to compare with (without "
                             "DIR: the released lists shipped with cvf)")
    args = parser.parse_args(argv)
    try:
        return check_folds(args)
    except (ValueError, OSError) as e:  # VocError is a ValueError; OSError: an unwritable --write-splits
        print(f"error: {e}", file=sys.stderr)
        return 2


def check_folds(args) -> int:
    mismatched = 0
    for fold in range(N_FOLDS):
        derived = pascal5i_val_list(args.data, fold)
        line = f"fold {fold}: {len(derived)} pairs"
        if args.write_splits:
            out = Path(args.write_splits) / "val" / f"fold{fold}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(format_fold_list(derived))
        if args.check:
            diff = compare_fold_lists(derived, read_fold_file(split_file(args.check, "val", fold)))
            line += f", {len(diff['missing'])} missing, {len(diff['extra'])} extra vs the standard list"
            mismatched += bool(diff["missing"] or diff["extra"])
        print(line)
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
