"""The released evaluation code (github.com/amirbar/visual_prompting at 6351e0d, unmodified),
imported with the shims a current stack needs, for tests that compare cvf with it side by side.
Found as the benchmarks find it (`benchmarks.released.reference_dir`: $CVF_RELEASED_CODE, then
the copies beside the checkout). Skips with the reason where the code or one of its
dependencies is absent."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from benchmarks.released import missing_reason, reference_dir  # noqa: E402

REFERENCE = reference_dir() or REPO / ".reference" / "visual_prompting"
# The standard Pascal-5i lists, byte-identical to the release's evaluate/splits/pascal.
SPLITS = REPO / "model" / "splits" / "pascal"
DETECTION_INDEX = REFERENCE / "evaluate_detection" / "2012_val_flattened_set.pth"


def require_reference() -> Path:
    if reference_dir() is None:
        pytest.skip(missing_reason())
    return REFERENCE


def _shim() -> None:
    """The shims (one list, shared with the benchmarks)."""
    from benchmarks.released import apply_shims

    apply_shims()


def import_released(tmp_root: Path):
    """A copy of the released code under `tmp_root` (outside the repository) with the standard
    Pascal-5i lists at evaluate/splits/pascal/, where its sampler reads them (the release ships
    them there; a clone may lack them, and cvf's own are byte-identical), on sys.path, shimmed.
    Returns the root of the copy."""
    require_reference()
    pytest.importorskip("timm", reason="the released models_mae.py imports timm")
    copy = tmp_root / "visual_prompting"
    if not copy.is_dir():
        shutil.copytree(REFERENCE, copy)
        shutil.copytree(SPLITS, copy / "evaluate" / "splits" / "pascal", dirs_exist_ok=True)
    _shim()
    for path in (str(copy), str(copy / "evaluate")):
        if path not in sys.path:
            sys.path.insert(0, path)
    return copy


def tiny_vqgan_factory(vqgan_module, params: dict, state: dict | None):
    """`vqgan.get_vq_model` replaced: the released VQModel with the given config and weights."""
    def get_vq_model(*_, **__):
        model = vqgan_module.VQModel(ddconfig=params["ddconfig"], lossconfig=None, n_embed=params["n_embed"],
                                     embed_dim=params["embed_dim"])
        if state is not None:
            model.load_state_dict(state, strict=True)
        return model.eval()
    return get_vq_model


def unload_released() -> None:
    """Forget the released modules (their names - vqgan, models_mae, evaluate - are generic)."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("models_mae", "vqgan", "mae_utils", "pascal_dataloader",
                                  "evaluate", "evaluate_detection", "util", "viz_utils",
                                  "segmentation_utils", "reasoning_dataloader"):
            del sys.modules[name]
