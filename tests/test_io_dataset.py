"""Dataset folders (images/, labels/, borders/) built from the real Usiigaci sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_usiigaci_set

from napari_cell_unet.io import DatasetFolderError, find_dataset_pairs, is_dataset_folder, read_image, read_labels


def _dataset(root: Path, usiigaci: Path, sets: list[str], label_folder: str = "labels") -> Path:
    """The layout training data usually has, with links to the real files (nothing copied)."""
    for sub in ("images", label_folder, "borders"):
        (root / sub).mkdir(parents=True)
    for name in sets:
        (root / "images" / f"{name}.tif").symlink_to(usiigaci / name / "raw.tif")
        (root / label_folder / f"{name}_labels.png").symlink_to(usiigaci / name / "instances_ids.png")
        if (usiigaci / name / "feature_0.png").exists():
            (root / "borders" / f"{name}.png").symlink_to(usiigaci / name / "feature_0.png")
    return root


def test_pairs_real_files_by_name_with_optional_borders(tmp_path, usiigaci):
    root = _dataset(tmp_path / "train", usiigaci, ["set10", "set2", "set18"])
    assert is_dataset_folder(root)
    pairs = find_dataset_pairs(root)
    assert [p.name for p in pairs] == ["set2", "set10", "set18"]  # natural order
    by_name = {p.name: p for p in pairs}
    assert by_name["set2"].borders is None and by_name["set18"].borders == root / "borders" / "set18.png"
    truth = load_usiigaci_set("set18")
    np.testing.assert_array_equal(read_image(by_name["set18"].image), truth["image"])
    np.testing.assert_array_equal(read_labels(by_name["set18"].labels), truth["labels"])


def test_masks_folder_is_accepted_and_unpaired_files_warn(tmp_path, usiigaci):
    root = _dataset(tmp_path / "d", usiigaci, ["set1", "set3"], label_folder="masks")
    (root / "images" / "lonely.tif").symlink_to(usiigaci / "set4" / "raw.tif")
    with pytest.warns(UserWarning, match="1 image\\(s\\) without labels \\(lonely"):
        pairs = find_dataset_pairs(root)
    assert [p.name for p in pairs] == ["set1", "set3"]


def test_folders_without_pairs_are_errors(tmp_path):
    (tmp_path / "images").mkdir()
    assert not is_dataset_folder(tmp_path)
    with pytest.raises(DatasetFolderError, match="needs an images/ and a labels/"):
        find_dataset_pairs(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"")
    (tmp_path / "labels" / "b.tif").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(DatasetFolderError, match="no image in images/"):
        find_dataset_pairs(tmp_path)


def test_ambiguous_names_are_an_error(tmp_path):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for name in ("images/a.tif", "images/a.png", "labels/a.tif"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DatasetFolderError, match="both match the name 'a'"):
        find_dataset_pairs(tmp_path)
