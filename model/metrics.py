"""Scores for visual prompting, as the released evaluation computes them, batched.

Images are uint8 [B,H,W,3] (or [H,W,3]) tensors already cropped to the answer cell unless a
function says otherwise. Per-episode functions return float64 tensors [B]; aggregates
(class-wise mIoU, FB-IoU) follow the few-shot segmentation convention of HSNet: intersections
and unions summed over episodes, then divided.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.vqgan import imagenet_mean_std

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
PURPLE = (0x44, 0x01, 0x54)
YELLOW = (0xFD, 0xE7, 0x25)


def _tensor(img) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))


def round_image(img, options=(WHITE, BLACK), wraparound: bool = True) -> torch.Tensor:
    """Snap every pixel to the nearest option colour by mean squared channel distance.

    The released `round_image` receives uint8 images and computes `(img - colour) ** 2` in
    uint8, so every difference and square wraps modulo 256 (a pixel (40, 169, 204) is "nearer"
    to black than to white). The published numbers come from that arithmetic, so it is the
    default; `wraparound=False` gives the true nearest colour. Ties go to the first option.
    Returns uint8, same shape.
    """
    img = _tensor(img).to(torch.int32)
    colours = torch.tensor(options, dtype=torch.int32, device=img.device)      # [K,3]
    diff = img[..., None, :] - colours                                          # [...,K,3]
    sq = (diff % 256) ** 2 % 256 if wraparound else diff ** 2
    return colours[sq.float().mean(-1).argmin(-1)].to(torch.uint8)


def is_colour(img: torch.Tensor, colour) -> torch.Tensor:
    """Bool [...,H,W]: the pixels of `img` [...,H,W,3] that are exactly `colour`."""
    return (img == torch.tensor(colour, dtype=img.dtype, device=img.device)).all(-1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den per episode; 0/0 is NaN, as in the release (aggregates skip NaN episodes)."""
    return num.double() / den.double()


def _per_episode(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(-1)


def segmentation_scores(ours, target, fg=WHITE, bg=BLACK) -> dict[str, torch.Tensor]:
    """Released `_calc_metric` on rounded crops: white-pixel IoU, colour-blind IoU, accuracy.

    colour-blind: the prediction is every pixel that is not background. accuracy is the share
    of pixels whose three channels all match (`.all(axis=2)`, as released).
    """
    ours, target = _tensor(ours), _tensor(target)
    if ours.dim() == 3:
        ours, target = ours[None], target[None]
    seg_target, seg_ours = is_colour(target, fg), is_colour(ours, fg)
    blind_ours = ~is_colour(ours, bg)
    return {
        "iou": _ratio(_per_episode(seg_target & seg_ours), _per_episode(seg_target | seg_ours)),
        "color_blind_iou": _ratio(_per_episode(seg_target & blind_ours),
                                  _per_episode(seg_target | blind_ours)),
        "accuracy": _ratio(_per_episode((ours == target).all(-1)), torch.tensor(target[0, ..., 0].numel())),
    }


def synthetic_scores(ours, target, colour=None, background=WHITE) -> dict[str, torch.Tensor]:
    """Released synthetic-task metric on rounded crops of the answer figure.

    IoU is over pixels of the task's output `colour` (colour-aware), colour-blind IoU counts
    any non-background prediction, accuracy is the share of pixels whose three channels all
    match. The release infers the colour from the target and asserts it holds exactly two
    colours, which its own uint8 rounding breaks at anti-aliased edges; without `colour` we
    take the target's most frequent non-background colour instead.
    """
    ours, target = _tensor(ours), _tensor(target)
    if ours.dim() == 3:
        ours, target = ours[None], target[None]
    scores = {"iou": [], "color_blind_iou": [], "accuracy": []}
    for o, t in zip(ours, target):
        c = colour
        if c is None:
            colours, counts = torch.unique(t.reshape(-1, 3), dim=0, return_counts=True)
            keep = ~is_colour(colours, background)
            if not keep.any():
                raise ValueError("the synthetic target holds only the background colour")
            c = colours[keep][counts[keep].argmax()].tolist()
        seg_t, seg_o = is_colour(t, c), is_colour(o, c)
        blind_o = ~is_colour(o, background)
        scores["iou"].append(_ratio((seg_t & seg_o).sum(), (seg_t | seg_o).sum()))
        scores["color_blind_iou"].append(_ratio((seg_t & blind_o).sum(), (seg_t | blind_o).sum()))
        scores["accuracy"].append(_ratio((o == t).all(-1).sum(), torch.tensor(seg_t.numel())))
    return {k: torch.stack(v) for k, v in scores.items()}


def largest_component_box(binary: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected True component and replace it by its filled bounding box.

    The released detection post-processing (`box_ops.to_rectangle`), with its own calls:
    `cv2.connectedComponents`, components ranked by `np.argsort(sizes)[::-1]` (of tied largest
    ones, the last label), the first ranked one that is foreground boxed. All False stays all
    False.
    """
    import cv2

    n, labels = cv2.connectedComponents(binary.astype(np.uint8) * 255)
    box = np.zeros(binary.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n)
    for label in np.argsort(sizes)[::-1]:
        ys, xs = np.nonzero(labels == label)
        if len(ys) == 0 or not binary[ys[0], xs[0]]:      # the background's label
            continue
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        break
    return box


def to_box(rounded, fg=WHITE, bg=BLACK) -> torch.Tensor:
    """Rounded crops [B,h,w,3] -> the same with the largest fg component made a filled box."""
    rounded = _tensor(rounded)
    out = torch.empty_like(rounded)
    for i, img in enumerate(rounded):
        box = torch.from_numpy(largest_component_box(is_colour(img, fg).cpu().numpy())).to(img.device)
        out[i] = torch.where(box[..., None], torch.tensor(fg, dtype=img.dtype, device=img.device),
                             torch.tensor(bg, dtype=img.dtype, device=img.device))
    return out


def fg_bg_areas(ours, target, fg=WHITE) -> torch.Tensor:
    """Per episode [B,2,2]: (intersection, union) for (background, foreground)."""
    ours, target = _tensor(ours), _tensor(target)
    if ours.dim() == 3:
        ours, target = ours[None], target[None]
    p, t = is_colour(ours, fg), is_colour(target, fg)
    areas = []
    for pred, true in ((~p, ~t), (p, t)):
        areas.append(torch.stack([_per_episode(pred & true), _per_episode(pred | true)], -1))
    return torch.stack(areas, 1).double()


def classwise_miou(areas: torch.Tensor, class_ids) -> tuple[float, dict[int, float]]:
    """Class-wise foreground IoU (sum of intersections / sum of unions per class), and its mean.

    `areas` is `fg_bg_areas` over all episodes, `class_ids` the query class of each episode.
    """
    class_ids = torch.as_tensor(class_ids)
    per_class = {}
    for c in sorted(set(class_ids.tolist())):
        fg = areas[class_ids == c, 1]
        per_class[int(c)] = float(fg[:, 0].sum() / fg[:, 1].sum()) if fg[:, 1].sum() else float("nan")
    return float(np.nanmean(list(per_class.values()))), per_class


def fb_iou(areas: torch.Tensor) -> float:
    """Mean of background and foreground IoU, each summed over all episodes."""
    iou = areas[..., 0].sum(0) / areas[..., 1].sum(0)
    return float(iou.mean())


def normalised_mse(ours, target) -> torch.Tensor:
    """Released colorization metric: MSE in ImageNet-normalised space, per episode."""
    mean, std = imagenet_mean_std(torch.float64, shape=(3,))      # images are HWC
    ours, target = _tensor(ours), _tensor(target)
    if ours.dim() == 3:
        ours, target = ours[None], target[None]
    a = (ours.double().cpu() / 255 - mean) / std
    b = (target.double().cpu() / 255 - mean) / std
    return ((a - b) ** 2).reshape(a.shape[0], -1).mean(-1)


# ----------------------------------------------------------------------------- LPIPS

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"


def default_lpips_weights() -> Path:
    """Where torchvision caches AlexNet: $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


class Lpips:
    """LPIPS (AlexNet, v0.1) with the backbone read from a local file, never downloaded.

    The `lpips` package ships its calibrated linear layers; the ImageNet AlexNet features come
    from torchvision's `alexnet-owt-7be5be79.pth` at `weights` (default: torchvision's cache).
    """

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        weights = Path(weights) if weights else default_lpips_weights()
        if not weights.is_file():
            raise FileNotFoundError(
                f"LPIPS needs the AlexNet backbone weights, and {weights} does not exist. "
                f"Download {ALEXNET_URL} on a machine with network access and place it at "
                f"{weights} (or pass its path with --lpips-weights).")
        import warnings

        import lpips

        with warnings.catch_warnings():   # lpips still passes torchvision's old `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
        features = torch.load(weights, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in features.items()
                    if k.startswith("features.")}
        backbone = {}
        for name, _ in self.net.net.named_parameters():          # "slice1.0.weight"
            key = name.split(".", 1)[1]                           # "0.weight"
            if key not in features:
                raise ValueError(f"{weights} is not torchvision AlexNet: no features.{key}")
            backbone[name] = features[key]
        self.net.net.load_state_dict(backbone)
        self.net.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, ours, target) -> torch.Tensor:
        """uint8 [B,H,W,3] pairs -> LPIPS distance per episode."""
        def prep(x):
            x = _tensor(x)
            x = x[None] if x.dim() == 3 else x
            return x.permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1
        return self.net(prep(ours), prep(target)).flatten().double().cpu()
