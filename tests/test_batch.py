"""Batch processing: chunked (dask) segmentation equals whole-image segmentation; folders with a bad file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.segmentation import find_boundaries

from napari_cell_unet import batch
from napari_cell_unet.inference import chunked
from napari_cell_unet.inference.instances import instances_from_probabilities
from napari_cell_unet.inference.normalize import percentile_range
from napari_cell_unet._progress import Progress, result_of
from napari_cell_unet.metrics import match_instances

CHUNK, OVERLAP = 128, 48


class _FakeModel:
    """What chunked inference reads of a `CellModel`: metadata (no cell_diameter), normalisation, thresholds."""
    metadata: dict = {}
    normalization = {"method": "percentile", "low": 0.0, "high": 100.0}
    postprocessing = {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 0}


def _pointwise_probabilities(image: np.ndarray) -> np.ndarray:
    """Stand-in for the network: normalised value 1 = cell interior, 0.6 = border, 0 = background.
    Pointwise, so any tiling gives the same probabilities and differences can only come from the chunking."""
    image = np.asarray(image, np.float32)
    cell = (image > 0.3).astype(np.float32)
    border = ((image > 0.3) & (image < 0.8)).astype(np.float32)
    return np.stack([cell, border])


def _disc_image(shape=(400, 460), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Discs (some touching pairs) placed over the chunk borders; returns (image, true labels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = [(y + rng.integers(-6, 7), x + rng.integers(-6, 7))
               for y in range(CHUNK, shape[0], CHUNK) for x in range(40, shape[1], 70)]
    centres += [(y, x) for y in range(40, shape[0], 90) for x in (CHUNK, 2 * CHUNK, 3 * CHUNK)]
    for cy, cx in centres:
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(12, 20) ** 2) & (labels == 0)
        labels[disc] = labels.max() + 1
    image = np.where(labels > 0, 1.0, 0.0)
    image[find_boundaries(labels, mode="inner")] = 0.6
    image += rng.normal(0, 0.02, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def assert_discs_across_chunk_borders_keep_one_id(labels: np.ndarray, truth: np.ndarray) -> None:
    """Each true disc crossing a chunk border (there are more than 10) is at least 98 % one label."""
    crossing = {int(i) for i in np.unique(truth[CHUNK - 1:CHUNK + 1]) if i} | \
               {int(i) for i in np.unique(truth[:, CHUNK - 1:CHUNK + 1]) if i}
    assert len(crossing) > 10
    for i in crossing:
        ids, counts = np.unique(labels[truth == i], return_counts=True)
        assert counts.max() >= 0.98 * counts.sum(), f"disc {i} split into {ids}"


@pytest.fixture
def fake_network():
    """A pointwise predictor that records the chunks it was given."""
    calls: list = []

    def predict(chunk: np.ndarray) -> np.ndarray:
        calls.append(chunk.shape)
        return _pointwise_probabilities(chunk)

    predict.calls = calls
    return predict


def test_dask_segmentation_equals_whole_image(fake_network):
    image, truth = _disc_image()
    labels = chunked.segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP, predict=fake_network)
    assert labels.numblocks == (3, 4) and labels.dtype == np.uint32  # 400 rows: the 16-row rest joins a chunk
    by_chunks = labels.compute(scheduler="synchronous")

    lo, hi = percentile_range(image, 0.0, 100.0)
    probs = _pointwise_probabilities((image - lo) / (hi - lo))
    whole = instances_from_probabilities(probs[0], probs[1], cell_threshold=0.5, border_threshold=0.5, min_size=0)
    # the same objects: one-to-one, each nearly pixel-identical (chunks may break a watershed tie on an edge
    # pixel differently from the whole image), and the same foreground
    n_objects = len(np.unique(whole)) - 1
    assert len(np.unique(by_chunks)) - 1 == n_objects
    assert match_instances(by_chunks, whole, iou_threshold=0.98).tp == n_objects
    assert np.array_equal(by_chunks > 0, whole > 0)
    assert_discs_across_chunk_borders_keep_one_id(by_chunks, truth)
    assert match_instances(by_chunks, truth, 0.5).f1 > 0.95


def test_iter_segment_dask_renumbers_and_reports_progress(fake_network):
    image, truth = _disc_image(seed=1)
    progress = []
    result = result_of(chunked.iter_segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP,
                                                 predict=fake_network), on_event=progress.append)
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.done for p in progress if p.message.startswith("chunk")] == list(range(1, 13))
    ids = np.unique(result)
    assert np.array_equal(ids, np.arange(ids.size))  # consecutive 0..N
    assert ids.size - 1 == len(np.unique(truth)) - 1


def test_cancel_stops_the_chunked_run(fake_network):
    image, _ = _disc_image(shape=(640, 640))
    run = chunked.iter_segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP, predict=fake_network)
    first = next(run)
    assert isinstance(first, Progress) and first.total == 25
    run.close()
    assert len(fake_network.calls) < 25  # the remaining chunks were never predicted


def test_normalisation_uses_global_percentiles():
    # a left-to-right ramp: per-chunk normalisation would make ~70 % of every chunk "cell"
    def no_border(chunk: np.ndarray) -> np.ndarray:
        probs = _pointwise_probabilities(chunk)
        probs[1] = 0
        return probs

    ramp = np.tile(np.linspace(0, 1000, 512, dtype=np.float32), (256, 1))
    labels = chunked.segment_dask(ramp, _FakeModel(), chunk=CHUNK, overlap=OVERLAP, predict=no_border)
    assert np.array_equal(labels.compute(scheduler="synchronous") > 0, ramp > 0.3 * 1000)


def test_segment_dask_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2D"):
        chunked.segment_dask(np.zeros((2, 64, 64)), _FakeModel())
    with pytest.raises(ValueError, match="overlap"):
        chunked.segment_dask(np.zeros((64, 64)), _FakeModel(), chunk=64, overlap=32)


def test_segment_folder_writes_labels_and_reports_a_bad_file(tmp_path, tiny_model):
    from conftest import load_small_set

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = load_small_set("set18")["image"]
    tifffile.imwrite(inputs / "a.tif", image[:96, :128])
    tifffile.imwrite(inputs / "b.tif", image[100:196, :160])
    (inputs / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    tifffile.imwrite(inputs / "a_labels.tif", np.zeros((8, 8), np.uint8))  # a label file: skipped
    out = tmp_path / "out"

    items = list(batch.segment_folder(inputs, out, tiny_model, device="cpu"))
    results = {r.input.name: r for r in items if isinstance(r, batch.FileResult)}
    assert set(results) == {"a.tif", "b.tif", "broken.tif"}
    assert not results["broken.tif"].ok and "broken.tif" in results["broken.tif"].error
    for name, shape in (("a", (96, 128)), ("b", (96, 160))):
        written = tifffile.imread(out / f"{name}_labels.tif")
        assert written.shape == shape and np.issubdtype(written.dtype, np.unsignedinteger)
        assert results[f"{name}.tif"].n_cells == len(np.unique(written)) - 1
    assert isinstance(items[-1], Progress) and items[-1].done == 3

    # a second run does not overwrite without being asked
    again = [r for r in batch.segment_folder(inputs / "a.tif", out, tiny_model, device="cpu")
             if isinstance(r, batch.FileResult)]
    assert not again[0].ok and "exists" in again[0].error


def test_segment_dask_runs_the_real_model_chunk_by_chunk(tiny_model):
    from conftest import load_small_set

    image = load_small_set("set18")["image"][:300, :360]
    items = []
    labels = result_of(chunked.iter_segment_dask(image, tiny_model, chunk=160, overlap=32, device="cpu",
                                                 tile_size=192), on_event=items.append)
    assert labels.shape == image.shape and labels.dtype == np.uint32
    assert sum(isinstance(p, Progress) and p.message.startswith("chunk") for p in items) == 6  # 2 x 3 chunks
    ids = np.unique(labels)
    assert np.array_equal(ids, np.arange(ids.size))


def test_output_names_never_collide(tmp_path):
    files = [tmp_path / "set1" / "raw.tif", tmp_path / "set2" / "raw.tif", tmp_path / "x" / "cells.ome.tif",
             tmp_path / "y" / "set1" / "raw.tif", tmp_path / "x" / "other.png"]
    names = [p.name for p in batch.output_paths(files, tmp_path / "out")]
    assert names == ["set1_raw_labels.tif", "set2_raw_labels.tif", "cells_labels.tif", "set1_raw_2_labels.tif",
                     "other_labels.tif"]


def test_segment_folder_names_same_stem_inputs_by_their_folder(tmp_path, tiny_model):
    from conftest import load_small_set

    image = load_small_set("set18")["image"][:64, :96]
    for name in ("set1", "set2"):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "raw.tif", image)
    out = tmp_path / "out"
    results = [r for r in batch.segment_folder([tmp_path / "set1", tmp_path / "set2"], out, tiny_model,
                                               device="cpu") if isinstance(r, batch.FileResult)]
    assert all(r.ok for r in results)
    assert sorted(p.name for p in out.iterdir()) == ["set1_raw_labels.tif", "set2_raw_labels.tif"]
    assert [r.output.name for r in results] == ["set1_raw_labels.tif", "set2_raw_labels.tif"]


def test_dask_diameter_rescales_each_chunk(fake_network):
    image, truth = _disc_image()
    plain = chunked.segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP, predict=fake_network)
    plain = plain.compute(scheduler="synchronous")
    native_shapes = list(fake_network.calls)
    fake_network.calls.clear()
    # _FakeModel has no cell_diameter: the 50-px fallback applies, so diameter 25 zooms every chunk 2x
    zoomed = chunked.segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP, predict=fake_network,
                                diameter=25.0).compute(scheduler="synchronous")
    assert sorted((h * 2, w * 2) for h, w in native_shapes) == sorted(fake_network.calls)
    assert zoomed.shape == image.shape
    n_objects = len(np.unique(plain)) - 1
    assert len(np.unique(zoomed)) - 1 == n_objects
    assert match_instances(zoomed, plain, iou_threshold=0.9).tp == n_objects


def test_a_model_without_min_size_removes_objects_under_30_px(tiny_model, fake_network):
    model = tiny_model.copy()
    del model.metadata["postprocessing"]["min_size"]
    model.metadata["normalization"] = dict(_FakeModel.normalization)
    assert model.postprocessing == {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 30,
                                    "merge_threshold": 0.0, "min_size_fraction": 0.0, "split_border_threshold": 0.0,
                                    "split_seed_fraction": 0.0}
    image, _ = _disc_image()
    image[300:304, 20:24] = 1.0  # a 16-px speck, far from the discs

    def labelled(min_size=None):
        return chunked.segment_dask(image, model, chunk=CHUNK, overlap=OVERLAP, predict=fake_network,
                                    min_size=min_size).compute(scheduler="synchronous")

    default = labelled()
    assert default[301, 21] == 0
    np.testing.assert_array_equal(default, labelled(min_size=30))
    assert labelled(min_size=0)[301, 21] > 0  # the speck is an object when nothing is removed


def test_huge_images_remove_pieces_under_the_models_fraction_of_a_cell(tiny_model, fake_network):
    """`min_size_fraction` counts a cell's area at the diameter segmented at (the model's own without one)."""
    model = tiny_model.copy()
    model.metadata["normalization"] = dict(_FakeModel.normalization)
    model.metadata["cell_diameter"] = 20.0  # a cell of 314 px: 10 % of it is 31 px
    model.metadata["postprocessing"] = {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 0,
                                        "min_size_fraction": 0.1}
    image, truth = _disc_image()
    image[300:304, 20:24] = 1.0  # a 16-px speck, far from the discs

    def labelled(**params):
        return chunked.segment_dask(image, model, chunk=CHUNK, overlap=OVERLAP, predict=fake_network,
                                    **params).compute(scheduler="synchronous")

    default = labelled()
    assert default[301, 21] == 0 and len(np.unique(default)) - 1 == len(np.unique(truth)) - 1
    assert labelled(min_size=0)[301, 21] > 0  # a size given is the whole rule
