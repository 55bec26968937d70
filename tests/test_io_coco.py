"""COCO / LIVECell reading and the labels writers, on the real Usiigaci COCO files and made-up edge cases."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile
from conftest import load_usiigaci_set

from napari_cell_unet.io import CocoFormatError, labels_to_coco, read_coco, write_labels_coco, write_labels_tiff
from napari_cell_unet.io.coco import CocoDataset


def _ious(labels: np.ndarray, truth: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([((labels == a) & (truth == b)).sum() / ((labels == a) | (truth == b)).sum() for a, b in pairs])


def _source_pairs(dataset: CocoDataset, i: int) -> list[tuple[int, int]]:
    """(label in the decoded image, value in instances_ids.png) for every annotation of image i."""
    return [(k, int(ann["source_object"][2:])) for k, ann in enumerate(dataset.annotations(i), start=1)]


def test_rle_file_decodes_exactly_to_the_instance_masks(usiigaci):
    dataset = read_coco(usiigaci / "coco_rle.json")
    assert len(dataset) == 40 and dataset.n_annotations == 2562
    i = \
        [dataset.file_name(k) for k in range(len(dataset))].index("set18/raw.tif")
    assert dataset.image_path(i) == usiigaci / "set18" / "raw.tif"
    truth = load_usiigaci_set("set18")["labels"]
    labels = dataset.labels(i)
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    assert labels.max() == len(dataset.annotations(i))
    assert _ious(labels, truth, _source_pairs(dataset, i)).min() == 1.0
    np.testing.assert_array_equal(dataset.read_image(i), load_usiigaci_set("set18")["image"])


def test_polygon_file_matches_the_instance_masks(usiigaci):
    dataset = read_coco(usiigaci / "coco_polygons.json")
    i = [dataset.file_name(k) for k in range(len(dataset))].index("set3/raw.tif")
    truth = load_usiigaci_set("set3")["labels"]
    ious = _ious(dataset.labels(i), truth, _source_pairs(dataset, i))
    assert ious.min() >= 0.97 and np.median(ious) >= 0.99


def test_annotation_ids_as_label_values_are_unique_across_images(usiigaci):
    dataset = read_coco(usiigaci / "coco_rle.json")
    first, second = dataset.labels(0, annotation_ids=True), dataset.labels(1, annotation_ids=True)
    assert set(np.unique(first)[1:]) == {a["id"] for a in dataset.annotations(0)}
    assert not set(np.unique(first)[1:]) & set(np.unique(second)[1:])
    table = dataset.annotation_table()
    assert len(table["annotation_id"]) == 2562 and set(table["category"]) == {"cell"}


def _tiny_coco(annotations, images=None) -> dict:
    images = images or [{"id": 7, "file_name": "A172_Phase_A7_1_00d00h00m_1.tif", "height": 20, "width": 30}]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}


def _square(ann_id, x, y, size=5, image_id=7):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "segmentation": [[x, y, x + size, y, x + size, y + size, x, y + size]]}


def test_livecell_dict_shaped_annotations(tmp_path):
    data = _tiny_coco({"11": _square(11, 2, 2), "12": _square(12, 10, 10)})
    (tmp_path / "livecell.json").write_text(json.dumps(data))
    dataset = read_coco(tmp_path / "livecell.json")
    labels = dataset.labels(0)
    assert dataset.n_annotations == 2 and set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 25 and labels[12, 12] == 2


def test_uncompressed_rle_is_accepted(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[3:6, 4:9] = 1
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = [int(c) for c in np.diff(np.r_[0, edges, flat.size])]  # starts with the zeros run (flat[0] == 0)
    ann = {"id": 1, "image_id": 7, "category_id": 1, "segmentation": {"size": [20, 30], "counts": counts}}
    dataset = CocoDataset(tmp_path / "x.json", _tiny_coco([ann]))
    np.testing.assert_array_equal(dataset.labels(0), mask)


@pytest.mark.parametrize("layout", ["next_to_json", "images", "livecell_test", "livecell_trainval_parent"])
def test_finds_images_in_coco_and_livecell_layouts(tmp_path, layout):
    name = "A172_Phase_A7_1_00d00h00m_1.tif"
    json_dir = {"next_to_json": tmp_path, "images": tmp_path, "livecell_test": tmp_path,
                "livecell_trainval_parent": tmp_path / "annotations" / "LIVECell"}[layout]
    image_dir = {"next_to_json": tmp_path, "images": tmp_path / "images",
                 "livecell_test": tmp_path / "livecell_test_images" / "A172",
                 "livecell_trainval_parent": tmp_path / "annotations" / "images" / "livecell_train_val_images" / "A172",
                 }[layout]
    json_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(image_dir / name, np.full((20, 30), 9, np.uint8))
    (json_dir / "a.json").write_text(json.dumps(_tiny_coco([_square(1, 2, 2)])))
    dataset = read_coco(json_dir / "a.json")
    assert dataset.image_path(0) == image_dir / name
    assert dataset.read_image(0).mean() == 9


def test_missing_image_names_the_searched_folders(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_tiny_coco([_square(1, 2, 2)])))
    dataset = read_coco(tmp_path / "a.json")
    assert dataset.image_path(0) is None
    assert str(tmp_path) in dataset.searched_folders and str(tmp_path / "images") in dataset.searched_folders
    with pytest.raises(Exception, match="not found"):
        dataset.read_image(0)
    assert dataset.labels(0).max() == 1  # labels still decode without the image


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"layers": []}), "not a COCO annotation file"),
    (json.dumps([1, 2]), "not a COCO annotation file"),
    (json.dumps(_tiny_coco([_square(1, 2, 2, image_id=99)])), "refers to image id 99"),
    (json.dumps(_tiny_coco([_square(1, 25, 2, size=20)])), "outside the 30x20 image"),
    (json.dumps(_tiny_coco([_square(1, 2, 2), _square(1, 9, 9)])), "annotation id 1 appears twice"),
    (json.dumps(_tiny_coco([{"id": 1, "image_id": 7, "segmentation": {"size": [10, 10], "counts": "a"}}])),
     "RLE size"),
    (json.dumps(_tiny_coco([{"id": 1, "image_id": 7, "segmentation": [["a", "b", "c", "d", "e", "f"]]}])),
     "flat list of numbers"),
    (json.dumps(_tiny_coco([], images=[{"id": 1, "file_name": "x.tif"}])), "lacks id, file_name, height or width"),
])
def test_bad_json_is_a_one_line_error_naming_the_file(tmp_path, content, problem):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(CocoFormatError, match=problem) as err:
        read_coco(tmp_path / "bad.json")
    assert str(err.value).startswith(str(tmp_path / "bad.json")) and "\n" not in str(err.value)


def test_livecell_sized_file_opens_in_seconds(tmp_path):
    """1,500 images as in LIVECell's test split; opening validates everything but decodes nothing."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"A172_Phase_{i}.tif", "height": 520, "width": 704} for i in range(1, 1501)]
    annotations = {}
    for n in range(1, 30001):
        x, y = rng.integers(0, 680), rng.integers(0, 500)
        annotations[str(n)] = _square(n, int(x), int(y), size=15, image_id=int(rng.integers(1, 1501)))
    (tmp_path / "livecell_coco_test.json").write_text(json.dumps(_tiny_coco(annotations, images)))
    start = time.perf_counter()
    dataset = read_coco(tmp_path / "livecell_coco_test.json")
    paths = [dataset.image_path(i) for i in range(len(dataset))]
    assert time.perf_counter() - start < 10
    assert len(dataset) == 1500 and dataset.n_annotations == 30000 and paths.count(None) == 1500


def test_rle_writer_round_trip_is_exact_on_real_labels(tmp_path, usiigaci):
    truth = load_usiigaci_set("set18")["labels"]
    path = write_labels_coco(tmp_path / "set18.json", truth, image_names=["raw.tif"])
    dataset = read_coco(path)
    np.testing.assert_array_equal(dataset.labels(0, annotation_ids=True), truth)
    assert dataset.file_name(0) == "raw.tif" and dataset.n_annotations == len(np.unique(truth)) - 1


def test_polygon_writer_round_trip_on_real_labels(tmp_path, usiigaci):
    truth = load_usiigaci_set("set20")["labels"]
    dataset = read_coco(write_labels_coco(tmp_path / "p.json", truth, polygons=True))
    assert all(isinstance(a["segmentation"], list) for a in dataset.annotations(0))
    labels = dataset.labels(0, annotation_ids=True)
    ids = [int(v) for v in np.unique(truth)[1:] if (truth == v).sum() >= 10]
    ious = _ious(labels, truth, [(v, v) for v in ids])
    assert ious.min() >= 0.95 and np.median(ious) >= 0.99


def test_writer_handles_stacks_gaps_and_objects_on_the_edges(tmp_path):
    stack = np.zeros((2, 6, 5), np.uint32)
    stack[0, 0, 0] = 70000  # corner pixel, id needs 32 bits
    stack[0, :, 4] = 3  # last column
    stack[1] = 5  # a whole image
    dataset = CocoDataset(tmp_path / "x.json", labels_to_coco(stack))
    assert len(dataset) == 2
    np.testing.assert_array_equal(np.stack([dataset.labels(i, annotation_ids=True) for i in range(2)]), stack)


def test_writer_renumbers_ids_repeated_across_slices(tmp_path):
    stack = np.zeros((2, 4, 4), np.uint8)
    stack[0, :2] = 1
    stack[1, 2:] = 1
    data = labels_to_coco(stack)
    assert [a["id"] for a in data["annotations"]] == [1, 2]
    dataset = CocoDataset(tmp_path / "x.json", data)
    assert [(dataset.labels(i) > 0).sum() for i in range(2)] == [8, 8]


@pytest.mark.parametrize("max_id, dtype", [(255, np.uint8), (256, np.uint16), (70000, np.uint32)])
def test_tiff_writer_uses_smallest_dtype_and_compresses(tmp_path, max_id, dtype):
    labels = np.zeros((64, 64), np.int64)
    labels[10:20, 10:20] = max_id
    path = write_labels_tiff(tmp_path / "l.tif", labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].dtype == dtype and tif.pages[0].compression != 1
        np.testing.assert_array_equal(tif.asarray(), labels)


def test_writers_refuse_to_overwrite_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "keep.tif"
    target.write_bytes(b"user data")
    for write in (write_labels_tiff, write_labels_coco):
        with pytest.raises(FileExistsError):
            write(target, np.ones((4, 4), np.uint8))
    assert target.read_bytes() == b"user data"
    write_labels_tiff(target, np.ones((4, 4), np.uint8), overwrite=True)
    assert tifffile.imread(target).sum() == 16
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(Exception):
        write_labels_coco(target, np.full((4, 4), -1), overwrite=True)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


@pytest.mark.parametrize("name", ["coco_polygons.json", "coco_rle.json"])
def test_lazy_file_decodes_only_the_image_asked_for_and_gives_the_same_labels(usiigaci, monkeypatch, name):
    """What napari's reader opens: no annotation is decoded until its image is; then labels, annotations
    and the features table equal those of the fully parsed file."""
    eager = read_coco(usiigaci / name)
    decoded: list[int] = []
    real_decoded = CocoDataset._decoded
    monkeypatch.setattr(CocoDataset, "_decoded", lambda self, entry, i: decoded.append(i) or real_decoded(self, entry, i))
    lazy = read_coco(usiigaci / name, lazy=True)
    table = lazy.annotation_table()
    assert decoded == [] and len(lazy) == 40 and lazy.n_annotations == eager.n_annotations > 2500
    for key, column in eager.annotation_table().items():
        np.testing.assert_array_equal(table[key], column)
    i = [lazy.file_name(k) for k in range(len(lazy))].index("set18/raw.tif")
    labels = lazy.labels(i, annotation_ids=True)
    assert set(decoded) == {i} and len(decoded) == len(eager.annotations(i)) > 50  # before eager's own calls
    np.testing.assert_array_equal(labels, eager.labels(i, annotation_ids=True))
    assert lazy.annotations(i) == eager.annotations(i)


def test_lazy_file_reports_a_bad_polygon_when_its_image_is_decoded(tmp_path):
    images = [{"id": k, "file_name": f"{k}.tif", "height": 20, "width": 30} for k in (1, 2)]
    data = _tiny_coco({"1": _square(1, 2, 2, image_id=1), "2": _square(2, 25, 2, size=20, image_id=2)}, images)
    (tmp_path / "a.json").write_text(json.dumps(data))
    dataset = read_coco(tmp_path / "a.json", lazy=True)
    assert dataset.labels(0).max() == 1
    with pytest.raises(CocoFormatError, match="annotation 2 .*outside the 30x20 image"):
        dataset.labels(1)
    with pytest.raises(CocoFormatError, match="outside the 30x20 image"):
        read_coco(tmp_path / "a.json")


@pytest.mark.parametrize("annotations, problem", [
    ([_square(1, 2, 2), _square(1, 9, 9)], "annotation id 1 appears twice"),
    ([_square(1, 2, 2), _square(2, 2, 2, image_id=99)], "annotation 2 refers to image id 99"),
    ([_square(10**30, 2, 2)], "is not an integer in 1..2"),
    ([{"id": 1, "image_id": 7}], "lacks id, image_id or segmentation"),
    ({"1": _square(1, 2, 2), "2": {**_square(2, 2, 2), "category_id": "cell"}}, "category_id 'cell'"),
])
def test_lazy_file_checks_ids_and_images_when_opened(tmp_path, annotations, problem):
    (tmp_path / "a.json").write_text(json.dumps(_tiny_coco(annotations)))
    with pytest.raises(CocoFormatError, match=problem):
        read_coco(tmp_path / "a.json", lazy=True)
