"""Episodes of the paper's four evaluations, as datasets of ready-made canvases.

Each task is two steps:
1. sample the episodes (which query, which supports) up front in the main process with the
   release's seed and draw order, so results do not depend on batch size or worker count;
2. a `torch.utils.data.Dataset` that loads images and builds the canvases of one episode,
   run in DataLoader workers. An item is {"canvas": uint8 [K,3,S,S] (K prompts for one
   query: supports x layouts), "class_id": int, "index": int}. Every canvas value is k/255
   (PIL-resized images on a 0 or 1 background), so uint8 carries it losslessly at a quarter
   of the bytes between workers and to the GPU; `canvas.float() / 255` restores it exactly.

The canvas's bottom-right cell (or last output figure) holds the ground truth, which the
evaluation crops from the de-normalised canvas exactly as the release does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model import voc
from model.metrics import BLACK, BLUE, GREEN, PURPLE, WHITE, YELLOW
from model.prompting import (cell_size, make_canvas, make_grid_canvas, make_rows_canvas,
                             rows_figure_size)

LAYOUTS = ("default", "flip")


@dataclass(frozen=True)
class Episode:
    query: object            # image id / index / synthetic figure parameters
    supports: tuple          # one or more of the same kind
    class_id: int = 0


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL -> float CHW in [0,1] (torchvision's ToTensor)."""
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def as_uint8(canvas01: torch.Tensor) -> torch.Tensor:
    return (canvas01 * 255).round().to(torch.uint8)


MASK_STYLES = ("bw", "purple", "texture", "edges")
# The release's 4-canvas ensemble (DatasetPASCAL(ensemble=True)): both orders, each with the
# white-on-black and the purple/yellow support mask; the query's answer cell stays white-on-black.
RELEASED_ENSEMBLE = (("default", "bw"), ("flip", "bw"), ("default", "purple"), ("flip", "purple"))


class PromptTask(Dataset):
    """Episodes -> canvases. Subclasses say how to `load(item, episode, style)` an (input,
    target) pair at `self.side` pixels, the target drawn in mask `style`; this builds the
    prompts of one episode:

    shots == 1: one released 2x2 canvas per support and variant (K = supports x variants);
                a variant is (layout, support mask style), by default each of `layouts` with
                `mask_style`;
    shots  > 1: the supports in groups of `shots`, each group one n-shot rows canvas
                (white background, `shots` example rows above the query row).
    """

    def __init__(self, episodes: list[Episode], size: int = 224, layouts=("default",),
                 shots: int = 1, mask_style: str = "bw", variants=None):
        if mask_style not in MASK_STYLES:
            raise ValueError(f"mask style must be one of {MASK_STYLES}, got {mask_style!r}")
        self.episodes, self.size, self.shots, self.mask_style = episodes, size, shots, mask_style
        self.variants = tuple(variants) if variants else tuple((l, mask_style) for l in layouts)
        self.layouts = tuple(layout for layout, _ in self.variants)
        self.side = cell_size(size) if shots == 1 else rows_figure_size(size, shots + 1)

    def __len__(self):
        return len(self.episodes)

    def load(self, item, episode: Episode, style: str = "bw") -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i):
        ep = self.episodes[i]
        query_img, query_target = self.load(ep.query, ep, self.mask_style)
        styles = dict.fromkeys(style for _, style in self.variants)
        supports = {st: [self.load(s, ep, st) for s in ep.supports] for st in styles}
        if self.shots == 1:
            canvases = [make_canvas(s_img, s_target, query_img, query_target, size=self.size,
                                    flip=layout == "flip")
                        for k in range(len(ep.supports)) for layout, style in self.variants
                        for s_img, s_target in [supports[style][k]]]
        else:
            pairs = supports[self.mask_style]
            canvases = [make_grid_canvas(pairs[k:k + self.shots], query_img, query_target, self.size)
                        for k in range(0, len(pairs), self.shots)]
        return {"canvas": as_uint8(torch.stack(canvases)), "class_id": ep.class_id, "index": i}


def style_colours(style: str) -> tuple[list, tuple]:
    """(colours a prediction is rounded to, background colour) of a mask style."""
    return {"bw": ([WHITE, BLACK], BLACK), "purple": ([YELLOW, PURPLE], PURPLE),
            "texture": ([WHITE, BLUE, BLACK], BLACK), "edges": ([WHITE, BLACK], BLACK)}[style]


def styled_target(binary: np.ndarray, style: str, side: int) -> torch.Tensor:
    """A foreground mask (bool [H,W], image resolution) as a [0,1] target cell in `style`.

    bw: white on black (1 channel, bicubic, as released); purple: the release's yellow on
    purple (drawn at image resolution, then bicubic); texture: the bw cell's foreground a
    4-pixel white/blue checkerboard; edges: only the bw cell's foreground boundary (2 px).
    """
    if style == "purple":
        colour = np.where(binary[..., None], np.array(YELLOW, np.uint8), np.array(PURPLE, np.uint8))
        return to_tensor(Image.fromarray(colour).resize((side, side), Image.BICUBIC))
    bw = Image.fromarray(np.where(binary, 255, 0).astype(np.uint8)).resize((side, side), Image.BICUBIC)
    if style == "bw":
        return to_tensor(bw)
    fg = np.asarray(bw) >= 128
    out = np.zeros((side, side, 3), np.uint8)
    if style == "texture":
        yy, xx = np.mgrid[:side, :side]
        checker = ((yy // 4 + xx // 4) % 2 == 0)[..., None]
        out[fg] = np.where(checker, np.array(WHITE, np.uint8), np.array(BLUE, np.uint8))[fg]
    else:   # edges: morphological gradient of the cell's mask
        import cv2

        kernel = np.ones((3, 3), np.uint8)
        fg8 = fg.astype(np.uint8)
        out[(cv2.dilate(fg8, kernel) - cv2.erode(fg8, kernel)) > 0] = WHITE
    return to_tensor(Image.fromarray(out))


# ----------------------------------------------------------------------------- segmentation

def _by_class(pairs) -> dict[int, list[str]]:
    by_class: dict[int, list[str]] = {}
    for image_id, cls in pairs:
        by_class.setdefault(cls, []).append(image_id)
    return by_class


def usable_queries(pairs, shots: int = 1) -> list[tuple[str, int]]:
    """Pairs whose class has `shots` other images (the release would loop forever on the rest;
    on full VOC every pair is usable)."""
    by_class = _by_class(pairs)
    usable = [(q, c) for q, c in pairs if len(set(by_class[c]) - {q}) >= shots]
    if not usable:
        raise ValueError(f"no query has {shots} other image(s) of its class to serve as support")
    return usable


def random_supports(pairs, n_episodes: int = 1000, seed: int = 0, shots: int = 1) -> list[Episode]:
    """The released Pascal-5i sampler: query i is pairs[i % len], supports random same-class.

    Same draws as `DatasetPASCAL.sample_episode` after `np.random.seed(seed)`.
    """
    rng = np.random.RandomState(seed)
    by_class, queries = _by_class(pairs), usable_queries(pairs, shots)
    episodes = []
    for i in range(n_episodes):
        query, cls = queries[i % len(queries)]
        supports: list[str] = []
        while len(supports) < shots:   # keep sampling while support == query, as the release
            s = str(rng.choice(by_class[cls], 1, replace=False)[0])
            if s != query and s not in supports:
                supports.append(s)
        episodes.append(Episode(query, tuple(supports), cls))
    return episodes


def nearest_supports(pairs, features: dict, n_episodes: int = 1000, shots: int = 1,
                     pool=None) -> list[Episode]:
    """Supports chosen by feature similarity (UnsupPR): the `shots` images of the same class
    whose (L2-normalised) features have the highest cosine similarity to the query's, taken
    from `pool` (e.g. the fold's trn list, as UnsupPR) or, without it, from `pairs` itself."""
    queries = usable_queries(pairs, shots) if pool is None else pairs
    by_class = _by_class(pairs if pool is None else pool)
    episodes = []
    for i in range(n_episodes):
        query, cls = queries[i % len(queries)]
        candidates = [s for s in dict.fromkeys(by_class.get(cls, [])) if s != query]
        if len(candidates) < shots:
            raise ValueError(f"the support pool has {len(candidates)} image(s) of class {cls} "
                             f"besides {query}; {shots} needed")
        picked = most_similar(features, query, candidates, shots)
        episodes.append(Episode(query, tuple(candidates[j] for j in picked), cls))
    return episodes


def most_similar(features: dict, query, candidates: list, shots: int) -> list[int]:
    """Indices of the `shots` candidates whose (L2-normalised) features have the highest cosine
    similarity to the query's, most similar first (ties: the earlier candidate)."""
    sims = torch.stack([features[c] for c in candidates]) @ features[query]
    return torch.argsort(sims, descending=True, stable=True)[:shots].tolist()


class VocTask(PromptTask):
    """Canvases from a VOC root, which must hold JPEGImages/ and the subclass's `targets` folder."""
    targets = ""

    def __init__(self, data, episodes: list[Episode], size: int = 224, layouts=("default",),
                 shots: int = 1, mask_style: str = "bw", variants=None):
        super().__init__(episodes, size, layouts, shots, mask_style, variants)
        self.root = voc.voc_root(data)
        voc.require(self.root, "JPEGImages", self.targets)


class SegmentationTask(VocTask):
    """Pascal-5i foreground segmentation canvases (images and masks bicubic to the cell)."""
    targets = "SegmentationClassAug"

    def load(self, image_id: str, episode: Episode, style: str = "bw") -> tuple[torch.Tensor, torch.Tensor]:
        side = (self.side, self.side)
        img = voc.read_image(self.root, image_id).resize(side, Image.BICUBIC)
        # the 255 boundary is not ignored, as in the release
        binary = voc.read_mask(self.root, image_id) == episode.class_id
        return to_tensor(img), styled_target(binary, style, self.side)


# ----------------------------------------------------------------------------- detection

def detection_episodes(queries: list[voc.VocObject], supports: list[voc.VocObject],
                       n_episodes: int | None = None, seed: int = 0, shots: int = 1,
                       features: dict | None = None) -> list[Episode]:
    """Every single-object val image (cycled up to `n_episodes`) with random supports of the
    same class from the train single-object set; with `features` (image id -> L2-normalised
    vector), the `shots` same-class supports most similar to the query instead (UnsupPR)."""
    rng = np.random.RandomState(seed)
    by_class: dict[int, list[voc.VocObject]] = {}
    for obj in supports:
        by_class.setdefault(obj.cls, []).append(obj)
    n_episodes = len(queries) if n_episodes is None else n_episodes
    episodes = []
    for i in range(n_episodes):
        query = queries[i % len(queries)]
        candidates = [s for s in by_class.get(query.cls, []) if s.image_id != query.image_id]
        if len(candidates) < shots:
            raise ValueError(f"no support of class {voc.VOC_CLASSES[query.cls - 1]} for "
                             f"{query.image_id} among {len(supports)} train images")
        if features is None:
            picked = rng.choice(len(candidates), shots, replace=False)
        else:
            picked = most_similar(features, query.image_id, [s.image_id for s in candidates], shots)
        episodes.append(Episode(query, tuple(candidates[j] for j in picked), query.cls))
    return episodes


def released_detection_episodes(queries: list[voc.VocObject], supports: list[voc.VocObject],
                                index: list[tuple[int, int]], n_episodes: int | None = None,
                                seed: int = 0) -> list[Episode]:
    """The released detection draws (`evaluate_detection/canvas_ds.py` over `voc_orig.py`).

    `queries`/`supports`: the single-object val/train sets in list order; `index`: the
    release's `2012_val_flattened_set.pth` pairs. Episode i's query is queries[index[i][0]]
    (both datasets index their images through that file); its class is drawn with
    `np.random.choice` among the query's labels; the train indices are shuffled with
    `np.random.shuffle` and the first whose image, supports[index[j][0]], holds the class is
    the support. One stream seeded with `seed`, as the release's `np.random.seed(seed)`.
    """
    check_detection_index(index, len(queries), len(supports))
    rng = np.random.RandomState(seed)
    n_episodes = len(queries) if n_episodes is None else n_episodes
    episodes = []
    for i in range(n_episodes):
        query = queries[index[i % len(queries)][0]]
        label = int(rng.choice(np.array([query.cls])))
        order = np.arange(len(supports))
        rng.shuffle(order)
        support = next((supports[index[j][0]] for j in order if supports[index[j][0]].cls == label), None)
        if support is None:
            raise ValueError(f"no single-object train image of class {voc.VOC_CLASSES[label - 1]} "
                             f"is reachable through the detection index (query {query.image_id})")
        episodes.append(Episode(query, (support,), label))
    return episodes


def check_detection_index(index, n_val: int, n_train: int, name: str = "the detection index") -> None:
    """The release reads index[i][0] as an image of the val set for i < n_val and of the train
    set for i < n_train; an index made for another VOC tree points past them."""
    need = max(n_val, n_train)
    if len(index) < need:
        raise ValueError(f"{name} has {len(index)} entries but the VOC tree's single-object sets "
                         f"need {need} ({n_val} val, {n_train} train): it does not match this tree")
    for n, what in ((n_val, "val"), (n_train, "train")):
        bad = [i for i in range(n) if not 0 <= index[i][0] < n]
        if bad:
            raise ValueError(f"{name} does not match the VOC tree: entry {bad[0]} points at image "
                             f"{index[bad[0]][0]} of the {what} single-object set, which holds {n} "
                             f"images ({len(bad)} such entries)")


class DetectionTask(VocTask):
    """Single-object detection canvases: the target is the box, white on black (bilinear)."""
    targets = "Annotations"

    def load(self, obj: voc.VocObject, episode: Episode, style: str = "bw") -> tuple[torch.Tensor, torch.Tensor]:
        if style != "bw":
            raise ValueError("detection targets are white boxes on black (mask style bw)")
        side = (self.side, self.side)
        img = voc.read_image(self.root, obj.image_id).resize(side, Image.BILINEAR)
        return to_tensor(img), to_tensor(voc.box_target(obj).resize(side, Image.BILINEAR))


# ----------------------------------------------------------------------------- colorization

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root) -> list[Path]:
    """Files of an ImageFolder tree (class folders, then files, both sorted, as torchvision)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected <data>/val/<class>/*.JPEG)")
    files = [f for d in sorted(p for p in root.iterdir() if p.is_dir())
             for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FileNotFoundError(f"no images under {root}/<class>/")
    return files


def colorization_episodes(n_images: int, n_episodes: int = 1000, seed: int = 5,
                          shots: int = 1) -> list[Episode]:
    """The released draw: `n_episodes` distinct queries among the first n-1 images (seed 5),
    then each support a random index below n_episodes - 1 (the release indexes the whole
    folder with it, so supports come from its first classes)."""
    if n_images - 1 < n_episodes:
        raise ValueError(f"colorization needs more than {n_episodes} images, found {n_images}")
    rng = np.random.RandomState(seed)
    queries = rng.choice(np.arange(0, n_images - 1), size=n_episodes, replace=False)
    return [Episode(int(q), tuple(int(rng.choice(np.arange(0, n_episodes - 1))) for _ in range(shots)))
            for q in queries]


def center_crop(img: Image.Image, side: int) -> Image.Image:
    """torchvision CenterCrop (images are larger than the cell)."""
    w, h = img.size
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


class ColorizationTask(PromptTask):
    """Grey centre crop -> colour centre crop, ImageNet val."""

    def __init__(self, files: list[Path], episodes: list[Episode], size: int = 224,
                 layouts=("default",), shots: int = 1, variants=None):
        super().__init__(episodes, size, layouts, shots, variants=variants)
        self.files = files

    def load(self, index: int, episode: Episode, style: str = "bw") -> tuple[torch.Tensor, torch.Tensor]:
        try:
            with Image.open(self.files[index]) as img:
                crop = center_crop(img.convert("RGB"), self.side)
        except OSError as e:
            raise ValueError(f"{self.files[index]} cannot be read as an image: {e}") from None
        return to_tensor(crop.convert("L").convert("RGB")), to_tensor(crop)


# ----------------------------------------------------------------------------- synthetic

@dataclass(frozen=True)
class Figure:
    """One synthetic figure: a filled shape on white, drawn on a 224x224 image."""
    center: tuple[int, int]
    radius: int
    color: tuple[int, int, int]
    shape: str = "circle"

    def draw(self, side: int = 224) -> np.ndarray:
        import cv2  # the release draws with OpenCV; its rasterisation is the ground truth

        image = np.full((side, side, 3), 255, dtype=np.uint8)
        x, y = self.center
        r = self.radius
        if self.shape == "circle":
            return cv2.circle(image, (x, y), r, self.color, -1)
        return cv2.rectangle(image, (x - r, y - r), (x + r, y + r), self.color, -1)


# task -> (input radius, output radius or None = same, output colour, output shape, colours)
SYNTHETIC_TASKS = {
    "color": (None, None, BLUE, "circle", [BLUE, GREEN, WHITE]),
    "shape": (None, None, GREEN, "rectangle", [GREEN, WHITE]),
    "size": (30, 20, GREEN, "circle", [BLUE, GREEN, WHITE]),
    "shape_color": (None, None, BLUE, "rectangle", [GREEN, BLUE, WHITE]),
    "size_color": (30, 20, BLUE, "circle", [GREEN, BLUE, WHITE]),
    "size_shape": (30, 20, GREEN, "rectangle", [GREEN, WHITE]),
}


def synthetic_output_colour(task: str) -> tuple[int, int, int]:
    return SYNTHETIC_TASKS[task][2]


def synthetic_colours(task: str) -> list[tuple[int, int, int]]:
    """Colours the prediction is rounded to: the task's colours plus black (the background)."""
    return SYNTHETIC_TASKS[task][4] + [BLACK]


def _synthetic_pair(task: str, rng: np.random.RandomState) -> tuple[Figure, Figure]:
    """Draw order of the release's `get_img`: centre x, centre y, then radius if not fixed."""
    radius_in, radius_out, colour, shape, _ = SYNTHETIC_TASKS[task]
    x, y = int(rng.randint(10, 224 - 10)), int(rng.randint(10, 224 - 10))
    r = int(rng.randint(10, 50)) if radius_in is None else radius_in
    return Figure((x, y), r, GREEN), Figure((x, y), radius_out or r, colour, shape)


def synthetic_episodes(task: str, n_episodes: int = 100, seed: int = 0, shots: int = 2) -> list[Episode]:
    """The released sampler: a query pair, then for each support a (discarded) index draw and
    a fresh pair, all from one stream seeded with `seed`."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose from {sorted(SYNTHETIC_TASKS)}")
    rng = np.random.RandomState(seed)
    episodes = []
    for _ in range(n_episodes):
        query = _synthetic_pair(task, rng)
        supports = []
        for _ in range(shots):
            rng.choice(np.arange(n_episodes))
            supports.append(_synthetic_pair(task, rng))
        episodes.append(Episode(query, tuple(supports)))
    return episodes


class SyntheticTask(Dataset):
    """3x2 canvases on black: two example rows, then the query row (answer hidden)."""

    def __init__(self, episodes: list[Episode], size: int = 224):
        self.episodes, self.size = episodes, size

    def __len__(self):
        return len(self.episodes)

    def figure(self, fig: Figure, rows: int) -> torch.Tensor:
        side = rows_figure_size(self.size, rows)
        img = Image.fromarray(fig.draw()).resize((side, side), Image.BILINEAR)
        return to_tensor(img)

    def __getitem__(self, i):
        ep = self.episodes[i]
        rows = len(ep.supports) + 1
        pairs = [(self.figure(a, rows), self.figure(b, rows)) for a, b in (*ep.supports, ep.query)]
        return {"canvas": as_uint8(make_rows_canvas(pairs, size=self.size, background=0.0)[None]),
                "class_id": 0, "index": i}
