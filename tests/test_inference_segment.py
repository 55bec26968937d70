"""normalize_image, devices, iter_segment / segment: stacks, colour, defaults, errors and cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_small_set, load_usiigaci_set
from napari_cell_unet._progress import Progress, result_of
from napari_cell_unet.inference import (DeviceError, ImageError, SegmentationResult, available_devices, iter_segment,
                                        normalize_image, resolve_device, segment)

# ------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_normalize_maps_percentiles_to_0_and_1(dtype):
    image = np.random.default_rng(1).integers(0, 200, (100, 120)).astype(dtype)
    out = normalize_image(image, 1.0, 99.0)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert abs(np.percentile(out, 1.0)) < 1e-5 and abs(np.percentile(out, 99.0) - 1) < 1e-5


def test_normalize_real_uint16_image(usiigaci):
    image = load_usiigaci_set("set21")["image"]
    out = normalize_image(image)
    assert np.isfinite(out).all()
    assert 0.005 < (out < 0).mean() + (out == 0).mean() < 0.02 and 0.001 < (out > 1).mean() < 0.004


def test_normalize_ignores_nan_and_inf():
    image = np.linspace(0, 1, 10_000, dtype=np.float32).reshape(100, 100)
    image[0, :5] = [np.nan, np.inf, -np.inf, np.nan, 1e30]
    out = normalize_image(image, 0, 99.0)
    assert np.isfinite(out).all()
    assert out[0, 0] == 0 and out[0, 1] == 1 and out[0, 2] == 0
    assert out[50, 50] == pytest.approx(0.505, abs=0.01)


def test_percentiles_of_a_huge_lazy_image_read_only_a_sample(usiigaci):
    from napari_cell_unet.inference.normalize import PERCENTILE_SAMPLE_PIXELS, percentile_range

    class ReadCounter:  # a lazy image that counts the pixels read from it
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.read = array, array.shape, array.dtype, 0

        def __getitem__(self, key):
            part = self.array[key]
            self.read += part.size
            return part

    image = np.tile(load_usiigaci_set("set21")["image"], (3, 3))  # > PERCENTILE_SAMPLE_PIXELS
    assert image.size > PERCENTILE_SAMPLE_PIXELS
    lazy = ReadCounter(image)
    lo, hi = percentile_range(lazy, 1.0, 99.8)
    assert 0 < lazy.read <= PERCENTILE_SAMPLE_PIXELS
    assert (lo, hi) == percentile_range(image, 1.0, 99.8)  # in memory: the same sample
    exact_lo, exact_hi = np.percentile(image, [1.0, 99.8])
    assert abs(lo - exact_lo) < 0.01 * (exact_hi - exact_lo) and abs(hi - exact_hi) < 0.01 * (exact_hi - exact_lo)


@pytest.mark.parametrize("image, message", [
    (np.full((30, 30), 7, np.uint16), "constant"),
    (np.full((30, 30), np.nan, np.float32), "finite"),
    (np.zeros((0, 30), np.uint8), "empty"),
])
def test_normalize_refuses_blank_images(image, message):
    with pytest.raises(ImageError, match=message):
        normalize_image(image)

# ------------------------------------------------------------------ devices


@pytest.mark.parametrize("diameter", [None, 40.0])
def test_several_instance_workers_give_the_labels_of_one(monkeypatch, tiny_model, diameter):
    """Beside a GPU the instance step runs in several threads (slices in flight, bands of a plane, the zoomed
    maps resized before the bands that read them): the labels and maps are those of one thread, progress still
    runs forward to the end and every slice is reported done."""
    import importlib

    from napari_cell_unet.inference import instances

    segment_module = importlib.import_module("napari_cell_unet.inference.segment")
    crop = load_small_set("set20")["image"][:456, :160]
    stack = np.stack([crop, crop[::-1], crop[:, ::-1], crop[::-1, ::-1], crop])
    monkeypatch.setattr(instances, "BAND_PIXELS", 60 * crop.shape[1])  # two bands on these small planes too
    bands = []

    class Counted(instances.BandedInstances):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bands.append(len(self.bounds))

    monkeypatch.setattr(segment_module, "BandedInstances", Counted)
    runs = {}
    for workers in (1, 3):
        monkeypatch.setattr(segment_module, "instance_workers", lambda device, workers=workers: workers)
        progress = []
        result = result_of(iter_segment(stack, tiny_model, device="cpu", tile_size=64, overlap=16, min_size=0,
                                        return_probabilities=True, diameter=diameter), on_event=progress.append)
        assert [p.done for p in progress] == sorted(p.done for p in progress)
        assert progress[-1].done == progress[-1].total
        assert sum("instances done" in (p.message or "") for p in progress) == len(stack)
        runs[workers] = result
    assert min(bands) == 2
    assert runs[1].labels.max() > 0
    np.testing.assert_array_equal(runs[3].labels, runs[1].labels)
    np.testing.assert_array_equal(runs[3].probabilities, runs[1].probabilities)


def test_instance_workers_one_beside_the_cpu_several_beside_a_gpu(monkeypatch):
    from napari_cell_unet.inference import devices

    monkeypatch.setattr(devices, "cpu_threads", lambda: 16)
    assert devices.instance_workers(torch.device("cpu")) == 1
    assert devices.instance_workers(torch.device("cuda")) == 8
    monkeypatch.setattr(devices, "cpu_threads", lambda: 2)
    assert devices.instance_workers(torch.device("cuda")) == 1


def test_several_images_in_one_run_give_each_its_own_result(tiny_model, crop):
    """`iter_segment_many`: each image's result is what `iter_segment` gives it alone (a stack, a colour image,
    probabilities asked for one of them), in order; an image's result comes after the next image's prediction
    started (its last instances run meanwhile)."""
    from napari_cell_unet.inference.segment import ImageProgress, SegmentedImage, iter_segment_many

    colour = np.stack([crop, crop[::-1], crop[:, ::-1]], axis=-1)
    images = [crop, np.stack([crop, crop[::-1]]), colour, crop[:64, :80]]
    params = dict(device="cpu", tile_size=64, overlap=16, min_size=0, diameter=40.0)
    events = list(iter_segment_many(iter(images), tiny_model, rgb=[False, False, True, False],
                                    return_probabilities=[False, True, False, False], **params))
    done = [event for event in events if isinstance(event, SegmentedImage)]
    assert [event.index for event in done] == [0, 1, 2, 3]
    for index in range(3):  # image k's result comes after image k + 1's first progress
        first_next = next(i for i, e in enumerate(events) if isinstance(e, ImageProgress) and e.index == index + 1)
        assert events.index(done[index]) > first_next
    for index, image in enumerate(images):
        alone = result_of(iter_segment(image, tiny_model, rgb=index == 2, return_probabilities=index == 1, **params))
        np.testing.assert_array_equal(done[index].result.labels, alone.labels)
        assert done[index].result.n_cells == alone.n_cells > 0 and done[index].result.diameter == 40.0
        assert (done[index].result.probabilities is None) == (index != 1)
    np.testing.assert_array_equal(done[1].result.probabilities, result_of(iter_segment(
        images[1], tiny_model, return_probabilities=True, **params)).probabilities)


def test_a_bad_image_ends_a_run_of_several_after_the_results_before_it(tiny_model, crop):
    from napari_cell_unet.inference.segment import SegmentedImage, iter_segment_many

    events = []
    with pytest.raises(ImageError):
        for event in iter_segment_many([crop, crop[::-1], np.zeros_like(crop), crop], tiny_model, device="cpu",
                                       tile_size=64, overlap=16, diameter=None):
            events.append(event)
    assert [e.index for e in events if isinstance(e, SegmentedImage)] == [0, 1]
    steps = iter_segment_many([crop, crop], tiny_model, device="cpu", tile_size=64, overlap=16, diameter=None)
    next(steps)
    steps.close()  # cancelled: nothing more, no error


def test_devices():
    names = available_devices()
    assert names[:2] == ["auto", "cpu"]
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else names[-1] if "mps" in names
                                           else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu-9000")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="not available"):
            resolve_device("cuda")
    if "mps" not in names:
        with pytest.raises(DeviceError, match="not available"):
            resolve_device("mps")


def test_fp16_on_cpu_is_refused(tiny_model):
    with pytest.raises(DeviceError, match="fp16"):
        segment(np.zeros((16, 16)) + np.eye(16), tiny_model, device="cpu", precision="fp16")

# ------------------------------------------------------------------ segment / iter_segment


@pytest.fixture
def crop():
    return load_small_set("set20")["image"][:96, :128]


def test_stack_is_segmented_slice_by_slice(tiny_model, crop):
    stack = np.stack([crop, crop[::-1], crop[:, ::-1]])
    progress = []
    result = result_of(iter_segment(stack, tiny_model, device="cpu", tile_size=64, overlap=16, min_size=0,
                                    return_probabilities=True, diameter=None), on_event=progress.append)
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == stack.shape and result.labels.dtype == np.uint32
    assert result.probabilities.shape == (3, 2, 96, 128) and result.probabilities.dtype == np.float32
    assert result.device == "cpu" and result.seconds > 0
    assert result.n_cells == sum(int(result.labels[i].max()) for i in range(3))
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total and "slice 3/3" in progress[-1].message
    # each slice equals segmenting it alone
    alone = segment(stack[1], tiny_model, device="cpu", tile_size=64, overlap=16, min_size=0, diameter=None)
    np.testing.assert_array_equal(alone, result.labels[1])


def test_colour_image_and_odd_crop(tiny_model, crop):
    rgb = np.repeat(crop[:, :, None], 3, axis=-1)
    assert segment(rgb, tiny_model, device="cpu").shape == crop.shape
    assert segment(crop[:20, :20], tiny_model, device="cpu").shape == (20, 20)
    labels, probs = segment(crop[:37, :101], tiny_model, device="cpu", return_probabilities=True)
    assert labels.shape == (37, 101) and probs.shape == (2, 37, 101)


def test_defaults_come_from_the_model_metadata(tiny_model, crop):
    kept = segment(crop, tiny_model, device="cpu", min_size=0, cell_threshold=0.0, border_threshold=1.1)
    assert kept.max() >= 1
    tiny_model.metadata["postprocessing"] = {"cell_threshold": 0.0, "border_threshold": 1.1, "min_size": 10**9}
    assert segment(crop, tiny_model, device="cpu").max() == 0
    assert segment(crop, tiny_model, device="cpu", min_size=0).max() >= 1


def test_blank_images(tiny_model, crop):
    with pytest.raises(ImageError, match="constant"):
        segment(np.full((40, 40), 3, np.uint16), tiny_model, device="cpu")
    stack = np.stack([crop, np.zeros_like(crop)])
    with pytest.warns(RuntimeWarning, match="left empty"):
        labels = segment(stack, tiny_model, device="cpu", min_size=0, cell_threshold=0.0, border_threshold=1.1)
    assert labels[0].max() >= 1 and labels[1].max() == 0
    with pytest.raises(ImageError, match="expected an image"):
        segment(np.zeros(50), tiny_model, device="cpu")


def test_model_none_without_bundled_model_is_a_clear_error(monkeypatch, tmp_path, crop):
    from napari_cell_unet.model import ModelFileError, files

    monkeypatch.setattr(files, "DEFAULT_MODEL_PATH", tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="default model"):
        segment(crop)


def count_forward_calls(model) -> list:
    calls = []
    model.network.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_closing_the_generator_stops_a_long_run(tiny_model, crop):
    image = np.tile(crop, (8, 8))  # 768 x 1024 in 64-px tiles: 12 x 16 = 192 tiles
    calls = count_forward_calls(tiny_model)
    tiny_model.network.train()
    threads = torch.get_num_threads()
    steps = iter_segment(image, tiny_model, device="cpu", tile_size=64, overlap=8, batch_size=2, threads=1,
                         diameter=None)
    first = next(steps)
    assert isinstance(first, Progress) and first.total > 50
    steps.close()
    assert len(calls) == 1  # one batch ran, nothing after the close
    assert tiny_model.network.training and torch.get_num_threads() == threads  # state restored in finally


def test_should_stop_cancels_segment(tiny_model, crop):
    calls = count_forward_calls(tiny_model)
    seen = []
    result = segment(np.tile(crop, (4, 4)), tiny_model, device="cpu", tile_size=64, overlap=8, batch_size=1,
                     progress=seen.append, should_stop=lambda: len(seen) >= 2, diameter=None)
    assert result is None and len(calls) == 2


def test_bundled_model_is_read_once_per_process():
    from napari_cell_unet.inference.segment import _resolve_model

    assert _resolve_model(None) is _resolve_model(None)


def test_test_time_augmentation_averages_the_four_flips(tiny_model, crop):
    from napari_cell_unet.inference import predict_probabilities

    image = crop[:64, :64]
    params = {"device": "cpu", "tile_size": 64, "overlap": 8}
    with_tta = predict_probabilities(image, tiny_model, tta=True, **params)
    flips = [(), (0,), (1,), (0, 1)]
    manual = np.mean([np.flip(predict_probabilities(np.flip(image, axes), tiny_model, **params), [a + 1 for a in axes])
                      for axes in flips], axis=0)
    np.testing.assert_allclose(with_tta, manual, atol=1e-5)
    plain = predict_probabilities(image, tiny_model, **params)
    assert not np.allclose(with_tta, plain, atol=1e-4)  # the untrained network is not flip-symmetric


def test_auto_precision_is_bf16_only_on_cpus_that_do_it_natively(monkeypatch):
    from napari_cell_unet.inference import devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)
    assert devices.resolve_precision("auto", cpu) == "bf16" and devices.channels_last(cpu, "bf16")
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    assert devices.resolve_precision("auto", cpu) == "fp32" and devices.channels_last(cpu, "fp32")
    assert devices.resolve_precision("bf16", cpu) == "bf16"  # on request, whatever the CPU


def test_cpu_fp32_prediction_goes_channels_last_and_matches_contiguous(tiny_model, crop, monkeypatch):
    """Channels-last is ~1.2x faster in fp32 on an AVX2 CPU too; it must not change the probabilities."""
    from napari_cell_unet.inference import TiledPredictor, predict, predict_probabilities

    def goes_channels_last() -> bool:
        predictor = TiledPredictor(tiny_model, **params)
        predictor.close()
        return predictor.channels_last

    params = dict(device="cpu", tile_size=64, overlap=8, precision="fp32")
    assert goes_channels_last()
    fast = predict_probabilities(crop, tiny_model, **params)
    monkeypatch.setattr(predict, "channels_last", lambda device, precision: False)
    assert not goes_channels_last()
    plain = predict_probabilities(crop, tiny_model, **params)
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    assert next(tiny_model.network.parameters()).is_contiguous()  # memory format restored afterwards


def test_bf16_channels_last_prediction_matches_fp32(tiny_model, crop):
    from napari_cell_unet.inference import predict_probabilities

    image = crop[:64, :64]
    fp32 = predict_probabilities(image, tiny_model, device="cpu", tile_size=64, overlap=8, precision="fp32")
    bf16 = predict_probabilities(image, tiny_model, device="cpu", tile_size=64, overlap=8, precision="bf16")
    assert np.abs(bf16 - fp32).max() < 0.05
    assert next(tiny_model.network.parameters()).is_contiguous()  # memory format restored afterwards


@pytest.mark.parametrize("zoom", [None, 1.25, 0.7])
def test_a_plane_in_bands_gets_its_instances_while_later_rows_are_predicted(monkeypatch, usiigaci, zoom):
    """A plane done in row bands hands each band to the instance thread as soon as its rows (and the margin below)
    are predicted (and, for a zoomed plane, resized back), bands ending a margin above a row of tiles; the labels
    are exactly those of the finished maps done in the same bands afterwards, and the maps exactly the zoomed
    prediction resized back in one piece."""
    import importlib

    from napari_cell_unet.inference import instances, predict_probabilities
    from napari_cell_unet.inference.rescale import BilinearRows, model_diameter, rescale_plane, resize_probabilities
    from napari_cell_unet.inference.tiling import make_grid
    from napari_cell_unet.model import files

    model = files.bundled_model()
    image = load_usiigaci_set("set20")["image"][:1024, :512]
    diameter = None if zoom is None else model_diameter(model) / zoom
    band_pixels = 420 * image.shape[1]
    early = []

    class Watched(instances.BandedInstances):
        def rows_final(self, cell_prob, border_prob, stop):
            super().rows_final(cell_prob, border_prob, stop)
            if stop < self.shape[0]:
                early.append(len(self.pending))

    monkeypatch.setattr(instances, "BAND_PIXELS", band_pixels)
    monkeypatch.setattr(importlib.import_module("napari_cell_unet.inference.segment"), "BandedInstances", Watched)
    progress = []
    result = result_of(iter_segment(image, model, device="cpu", tile_size=192, overlap=32, diameter=diameter,
                                    return_probabilities=True), on_event=progress.append)
    zoomed = rescale_plane(image, zoom or 1.0)
    starts = make_grid(zoomed.shape, 192, 32, 32).starts_y
    if zoom is not None:
        starts = [BilinearRows(zoomed.shape, image.shape).rows_from(row) for row in starts]
    margin = instances.BAND_MARGIN if zoom is None else max(instances.BAND_MARGIN, int(3 * diameter))
    post = instances.sized_params(instances.instance_params(model), diameter or model_diameter(model))
    bands = instances.BandedInstances(image.shape, band_pixels=band_pixels, final_rows=starts, margin=margin, **post)
    assert len(bands.bounds) >= 3
    if zoom is None:
        assert bands.bounds[-1][0] == starts[-1] - margin
        assert max(early) == len(bands.bounds) - 1  # every band but the last started before the plane was done
    else:  # a margin of 3 diameters (up to 214 rows) leaves fewer bands room to start early on this small plane
        assert max(early) >= 1
    expected_maps = resize_probabilities(predict_probabilities(zoomed, model, device="cpu", tile_size=192,
                                                               overlap=32), image.shape)
    np.testing.assert_array_equal(result.probabilities, expected_maps)
    cell, border = result.probabilities
    expected = bands.labels_of(cell, border)
    assert expected.max() > 30  # set20's left half holds 54 cells (some cut by its edges)
    np.testing.assert_array_equal(result.labels, expected)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total


def test_an_error_in_the_instance_thread_reaches_the_caller(monkeypatch, tiny_model, crop):
    from napari_cell_unet.inference import instances

    def broken(*args, **kwargs):
        raise MemoryError("no room for the watershed")

    monkeypatch.setattr(instances, "instances_from_probabilities", broken)
    with pytest.raises(MemoryError, match="watershed"):
        segment(np.stack([crop, crop]), tiny_model, device="cpu", diameter=None)
