"""VOC 2012 reader, Pascal-5i lists derived from the data, single-object detection set."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model import voc

MASKED = ["2007_000033", "2007_000063", "2008_004630", "2010_002030", "2011_000003",
          "2011_000006", "2011_000025"]
VAL = ["2007_000033", "2010_002030"]          # in the standard val lists (fixture README)


def make_root(tmp_path, testdata, val=VAL, train=()):
    """A VOCdevkit/VOC2012 layout over the real fixture files (symlinks) plus image lists."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    root.mkdir(parents=True)
    for folder in ("JPEGImages", "SegmentationClassAug", "Annotations"):
        (root / folder).symlink_to(testdata / "voc" / folder)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    return root


def test_root_layouts(tmp_path, testdata):
    root = make_root(tmp_path, testdata)
    assert voc.voc_root(tmp_path) == root and voc.voc_root(root) == root
    with pytest.raises(voc.VocError, match="no JPEGImages"):
        voc.voc_root(tmp_path / "VOCdevkit")


def test_derived_val_lists_match_the_standard_ones(tmp_path, testdata):
    make_root(tmp_path, testdata)
    for fold in range(4):
        derived = voc.pascal5i_val_list(tmp_path, fold)
        standard = voc.read_fold_file(testdata / "pascal5i_splits" / "val" / f"fold{fold}.txt")
        assert voc.compare_fold_lists(derived, standard, VAL) == {"missing": [], "extra": []}
    assert voc.pascal5i_val_list(tmp_path, 0) == [("2007_000033", 1), ("2010_002030", 2)]


def test_derived_train_pairs_match_the_standard_ones(testdata):
    root = voc.voc_root(testdata / "voc")
    train_ids = [i for i in MASKED if i not in VAL]
    for fold in range(4):
        derived = voc.derive_fold_list(root, fold, train_ids)
        standard = voc.read_fold_file(testdata / "pascal5i_splits" / "trn" / f"fold{fold}.txt")
        assert voc.compare_fold_lists(derived, standard, train_ids) == {"missing": [], "extra": []}


def test_standard_list_sizes(testdata):
    sizes = [len(voc.read_fold_file(testdata / "pascal5i_splits" / "val" / f"fold{k}.txt"))
             for k in range(4)]
    assert sizes == [346, 451, 725, 346]
    assert voc.fold_classes(3) == [16, 17, 18, 19, 20]
    with pytest.raises(ValueError):
        voc.fold_classes(4)


def test_clear_errors(tmp_path, testdata):
    root = make_root(tmp_path, testdata, val=VAL + ["2099_000001"])
    (root / "SegmentationClassAug").unlink()
    with pytest.raises(voc.VocError, match="missing the folder SegmentationClassAug"):
        voc.pascal5i_val_list(tmp_path, 0)
    (root / "SegmentationClassAug").symlink_to(testdata / "voc" / "SegmentationClassAug")
    with pytest.raises(voc.VocError, match="SegmentationClassAug/2099_000001.png"):
        voc.pascal5i_val_list(tmp_path, 0)
    with pytest.raises(voc.VocError, match="ImageSets/Main/val.txt"):
        voc.read_ids(root, "Main/val")
    with pytest.raises(voc.VocError, match="JPEGImages/2099_000001.jpg"):
        voc.read_image(root, "2099_000001")


def test_unreadable_image(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "2012_000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(voc.VocError, match="2012_000001.jpg cannot be read as an image"):
        voc.read_image(tmp_path, "2012_000001")


def test_mask_of_the_wrong_size(tmp_path, testdata):
    root = tmp_path / "voc"
    (root / "SegmentationClassAug").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(testdata / "voc" / "JPEGImages")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8), mode="L").save(
        root / "SegmentationClassAug" / "2007_000033.png")
    with pytest.raises(voc.VocError, match="is 12x10 but its image is 500x366"):
        voc.read_mask(root, "2007_000033")
    assert voc.read_mask(testdata / "voc", "2007_000033").shape == (366, 500)


def test_single_object_set_and_filters(testdata):
    root = voc.voc_root(testdata / "voc")
    ids = ["2007_000063", "2011_003353"]       # two objects; one person over 50% of the image
    objects = voc.read_objects(root, "2007_000063")
    assert [o.cls for o in objects] == [12, 9]                      # dog, chair
    assert objects[0].box == (122.0, 114.0, 379.0, 275.0)          # 1-based -> 0-based corner
    assert voc.single_object_set(root, ids, "code") == []
    assert voc.single_object_set(root, ids, "paper") == []
    (person,) = voc.single_object_set(root, ids, "none")
    assert person.cls == 15 and 0.5 < person.area_fraction < 0.6
    target = np.array(voc.box_target(person))
    assert target.shape == (500, 375, 3) and set(np.unique(target)) == {0, 255}
    assert target[45:470, 129:375].all() and not target[:44].any()
    with pytest.raises(ValueError, match="area_filter"):
        voc.single_object_set(root, ids, "huge")


def test_cli_writes_and_checks(tmp_path, testdata, capsys):
    make_root(tmp_path, testdata)
    out = tmp_path / "splits"
    code = voc.main(["--data", str(tmp_path), "--write-splits", str(out)])
    assert code == 0
    assert (out / "val" / "fold0.txt").read_text() == "2007_000033__01\n2010_002030__02\n"
    # against the full standard lists, a 2-image VOC root misses nearly every pair
    assert voc.main(["--data", str(tmp_path), "--check", str(testdata / "pascal5i_splits")]) == 1
    assert "missing" in capsys.readouterr().out


def test_cli_bad_root_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert voc.main(["--data", str(tmp_path)]) == 2
    assert "error:" in (err := capsys.readouterr().err) and "not a VOC 2012 root" in err
    (tmp_path / "JPEGImages").mkdir()
    assert voc.main(["--data", str(tmp_path)]) == 2
    assert "missing the folder SegmentationClassAug" in capsys.readouterr().err


def test_small_objects_are_left_out_as_in_the_standard_lists(testdata):
    root = voc.voc_root(testdata / "voc")
    # 2011_000003 holds a 601-pixel bottle (class 5): absent from trn fold 0
    assert voc.derive_fold_list(root, 0, ["2011_000003"]) == []
    assert voc.derive_fold_list(root, 0, ["2011_000003"], min_pixels=0) == [("2011_000003", 5)]


def test_standard_lists_ship_with_the_package(testdata):
    for split in ("trn", "val"):
        for fold in range(4):
            name = f"{split}/fold{fold}.txt"
            assert (voc.STANDARD_SPLITS / name).read_bytes() == (testdata / "pascal5i_splits" / name).read_bytes()
    pairs = voc.fold_list(None, 0)               # no VOC root needed: the list is a fact
    assert len(pairs) == 346 and pairs[0] == ("2007_000033", 1)
    assert len(voc.fold_list(None, 2, "trn")) == 5883


def test_fold_list_sources(tmp_path, testdata):
    make_root(tmp_path, testdata)
    assert voc.fold_list(tmp_path, 0, splits="derived") == [("2007_000033", 1), ("2010_002030", 2)]
    with pytest.raises(voc.VocError, match="derives only the val lists"):
        voc.fold_list(tmp_path, 0, "trn", splits="derived")
    own = tmp_path / "own"
    (own / "val").mkdir(parents=True)
    (own / "val" / "fold1.txt").write_text("2007_000033__06\n")
    assert voc.fold_list(None, 1, splits=own) == [("2007_000033", 6)]
    with pytest.raises(voc.VocError, match=r"has no val/fold0\.txt"):
        voc.fold_list(None, 0, splits=own)
    with pytest.raises(voc.VocError, match=r"has no val/fold0\.txt"):
        voc.check_split_dir(own)
    (own / "val" / "fold3.txt").write_text("2007_000033__02\n")
    with pytest.raises(voc.VocError, match="not of fold 3"):
        voc.fold_list(None, 3, splits=own)
    (own / "val" / "fold0.txt").write_text("2007_000033-01\n")
    with pytest.raises(voc.VocError, match="line 1"):
        voc.fold_list(None, 0, splits=own)


def test_cli_checks_against_the_shipped_lists_by_default(tmp_path, testdata, capsys):
    make_root(tmp_path, testdata)
    assert voc.main(["--data", str(tmp_path), "--check"]) == 1
    assert "missing" in capsys.readouterr().out
