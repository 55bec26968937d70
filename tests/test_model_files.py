"""Model files: .safetensors round trip, refusing pickles, clear one-line errors, plain .pth state dicts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import TINY_ARCHITECTURE
from napari_cell_unet.model import CellModel, ModelFileError, load_model, save_model


def outputs(model: CellModel) -> np.ndarray:
    torch.manual_seed(1)
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        return model.network.eval()(x).numpy()


def test_round_trip_keeps_weights_and_metadata(tiny_model, tmp_path):
    tiny_model.metadata["postprocessing"] = {"cell_threshold": 0.4, "border_threshold": 0.6, "min_size": 12,
                                             "merge_threshold": 0.3, "min_size_fraction": 0.15,
                                             "split_border_threshold": 0.02}
    tiny_model.metadata["training"] = {"steps": 3, "data": ["set20"]}
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.metadata["architecture"] == TINY_ARCHITECTURE
    assert loaded.postprocessing == {"cell_threshold": 0.4, "border_threshold": 0.6, "min_size": 12,
                                     "merge_threshold": 0.3, "min_size_fraction": 0.15,
                                     "split_border_threshold": 0.02, "split_seed_fraction": 0.0}  # completed
    assert loaded.metadata["training"] == {"steps": 3, "data": ["set20"]}
    assert "torch" in loaded.metadata["versions"]
    np.testing.assert_array_equal(outputs(loaded), outputs(tiny_model))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


def test_half_precision_file_is_smaller_and_close(tiny_model, tmp_path):
    full = save_model(tiny_model, tmp_path / "full.safetensors")
    half = save_model(tiny_model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    np.testing.assert_allclose(outputs(load_model(half)), outputs(tiny_model), atol=0.05)


class _Exploit:
    def __reduce__(self):
        return (os.mkdir, (os.environ["CELL_UNET_PICKLE_MARKER"],))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickled_file_is_refused_and_never_executed(tmp_path, monkeypatch, suffix):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CELL_UNET_PICKLE_MARKER", str(marker))
    path = tmp_path / f"evil{suffix}"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Exploit()}, path)
    with pytest.raises(ModelFileError, match=r"refused: it holds pickled Python objects \(posix.mkdir\)") as info:
        load_model(path)
    assert not marker.exists()
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert "weights_only" not in str(info.value)  # never suggest the unsafe way to load it


def test_plain_state_dict_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = CellModel.create()
    path = tmp_path / "weights.pth"
    torch.save(model.network.state_dict(), path)
    loaded = load_model(path)
    np.testing.assert_allclose(outputs(loaded), outputs(model), atol=1e-6)
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": model.network.state_dict(), "epoch": 3}, wrapped)
    assert load_model(wrapped).metadata["name"] == "checkpoint"


def test_state_dict_of_another_architecture_is_a_clear_error(tiny_model, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.network.state_dict(), path)  # .pth files are read as the default architecture
    with pytest.raises(ModelFileError, match="do not match") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def _error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_foreign_and_mismatched_files(tiny_model, tmp_path):
    good = save_model(tiny_model, tmp_path / "good.safetensors")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable safetensors file" in _error(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model" * 10)
    assert "not a readable safetensors file" in _error(garbage)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    assert "not a napari-cell-unet model" in _error(foreign)

    mismatched = tmp_path / "mismatched.safetensors"
    state = {k: v.contiguous() for k, v in tiny_model.network.state_dict().items()}
    meta = {**tiny_model.metadata, "architecture": {**TINY_ARCHITECTURE, "decoder_channels": [64, 32, 16]}}
    save_file(state, str(mismatched), metadata={"napari_cell_unet": json.dumps(meta)})
    assert "do not match the architecture" in _error(mismatched)

    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert "unknown model file type" in _error(notes)
    assert "no such model file" in _error(tmp_path / "absent.safetensors")


def test_saving_requires_the_safetensors_suffix(tiny_model, tmp_path):
    with pytest.raises(ModelFileError, match=".safetensors"):
        save_model(tiny_model, tmp_path / "model.pt")
