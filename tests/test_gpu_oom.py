"""GPU out of memory (simulated, on the CPU): the predictor halves its tiles, then moves to the CPU, with a
warning each time, and still returns the same probabilities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_ARCHITECTURE

from napari_cell_unet._progress import result_of
from napari_cell_unet.inference.predict import MIN_TILE_SIZE, TiledPredictor
from napari_cell_unet.model import CellModel


@pytest.mark.parametrize("fits_at", [256, None])  # None: not even the smallest tile fits on the "GPU"
def test_out_of_memory_halves_tiles_then_falls_back_to_the_cpu(monkeypatch, fits_at):
    torch.manual_seed(0)
    model = CellModel.create(architecture=dict(TINY_ARCHITECTURE))
    image = np.random.default_rng(0).random((100, 90)).astype(np.float32)  # one tile at any tile size
    expected = _predict(TiledPredictor(model, device="cpu", tile_size=1024), image)

    predictor = TiledPredictor(model, device="cpu", tile_size=1024)
    predictor.device = torch.device("cuda")  # pretend; the network stays on the CPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    real_launch = TiledPredictor._launch
    sizes = []

    def launch(self, tiles):
        sizes.append(self.tile_size)
        if self.device.type == "cuda" and (fits_at is None or self.tile_size > fits_at):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.device = torch.device("cpu")  # the real forward pass, on the CPU
        return real_launch(self, tiles)

    monkeypatch.setattr(TiledPredictor, "_launch", launch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probabilities = _predict(predictor, image)
    messages = [str(w.message) for w in caught if "out of memory" in str(w.message)]
    if fits_at is None:
        assert MIN_TILE_SIZE == 256 and sizes == [1024, 512, 256, 256]  # the last try ran on the CPU
        assert messages[-1] == "GPU out of memory even with small tiles: continuing on the CPU"
    else:
        assert sizes == [1024, 512, 256]
        assert messages == ["GPU out of memory: retrying with 512-px tiles",
                            "GPU out of memory: retrying with 256-px tiles"]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def _predict(predictor: TiledPredictor, image: np.ndarray) -> np.ndarray:
    try:
        return result_of(predictor.iter_predict(image))
    finally:
        predictor.close()


def test_the_next_batch_is_launched_before_the_previous_one_is_blended(monkeypatch):
    """On a GPU `_launch` only queues a batch: the predictor queues batch k + 1 before it waits for batch k's
    probabilities, so the GPU computes while the CPU blends; the probabilities are those of plain prediction. (On
    the CPU, where a launch is the whole work, each batch is blended at once.)"""
    torch.manual_seed(0)
    model = CellModel.create(architecture=dict(TINY_ARCHITECTURE))
    image = np.random.default_rng(0).random((200, 130)).astype(np.float32)
    expected = _predict(TiledPredictor(model, device="cpu", tile_size=64, overlap=16), image)
    calls = []
    real_launch, real_result = TiledPredictor._launch, TiledPredictor._result

    def launch(self, tiles):
        calls.append(("launch", len([c for c in calls if c[0] == "launch"])))
        return calls[-1][1], real_launch(self, tiles)

    def result(launched):
        calls.append(("result", launched[0]))
        return real_result(launched[1])

    monkeypatch.setattr(TiledPredictor, "_launch", launch)
    monkeypatch.setattr(TiledPredictor, "_result", staticmethod(result))
    monkeypatch.setattr(TiledPredictor, "_queues_work", lambda self: True)  # as on CUDA
    probabilities = _predict(TiledPredictor(model, device="cpu", tile_size=64, overlap=16, batch_size=2), image)
    launches = sum(1 for kind, _ in calls if kind == "launch")
    assert launches >= 3
    assert calls == [("launch", 0)] + [call for k in range(1, launches) for call in (("launch", k), ("result", k - 1))] \
        + [("result", launches - 1)]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)  # batches of 2 round differently
