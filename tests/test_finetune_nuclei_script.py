"""The nuclei fine-tuning recipe (scripts/finetune_default_nuclei.py): an honest split and sound rescaled pairs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile

from conftest import REPO

SCRIPT = REPO / "scripts" / "finetune_default_nuclei.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("finetune_default_nuclei", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nuclei_training_pairs_hold_only_the_left_half(recipe):
    left, right = recipe.nuclei_halves()
    full = tifffile.imread(recipe.SAMPLE / "dsb2018_nuclei.tif")
    assert left.image.shape == right.image.shape == (512, 256)
    np.testing.assert_array_equal(left.image, full[:, :256])
    np.testing.assert_array_equal(right.image, full[:, 256:])
    pairs = recipe.training_pairs([], left, (3, 2), half_scale=False)
    assert len(pairs) == 5
    at_1x = [p for p in pairs if p.image.shape == (512, 256)]
    at_2x = [p for p in pairs if p.image.shape == (1024, 512)]
    assert len(at_1x) == 3 and len(at_2x) == 2
    assert all(p is left for p in at_1x)
    # the 2x copy is the left half upscaled: subsampling it gives the left half back, not the right
    assert np.abs(at_2x[0].image[::2, ::2] - left.image).mean() < np.abs(at_2x[0].image[::2, ::2] - right.image).mean() / 4

def test_rescaled_pair_keeps_every_nucleus(recipe):
    left, _ = recipe.nuclei_halves()
    up = recipe.rescaled(left, 2.0, "up")
    down = recipe.rescaled(left, 0.5, "down")
    assert up.image.shape == (1024, 512) and down.image.shape == (256, 128)
    assert set(np.unique(up.labels)) == set(np.unique(left.labels))
    assert up.borders is None  # derived at the new scale, not resized
    # areas scale with the square of the factor (nearest-neighbour labels)
    ids, counts = np.unique(left.labels[left.labels > 0], return_counts=True)
    big = ids[counts > 200]
    up_counts = {i: int((up.labels == i).sum()) for i in big}
    assert all(abs(up_counts[i] / c - 4.0) < 0.2 for i, c in zip(ids[counts > 200], counts[counts > 200]))
    assert 0.6 < down.image.mean() / left.image.mean() < 1.4
