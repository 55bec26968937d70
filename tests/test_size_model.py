"""The learned size regression behind `diameter="auto"`: fitting, its place in a model file, and when it is used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_inference_diameter import disc_field
from test_inference_rescale import pointwise_model

from napari_cell_unet.inference import estimate_diameter
from napari_cell_unet.inference.diameter import estimate_cell_diameter
from napari_cell_unet.inference.size_model import (METADATA_KEY, PROBE_DIAMETERS, SizeRegression,
                                                   encoder_fingerprint, size_regression)


def test_ridge_fit_recovers_a_log_linear_size_law():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 12))
    truth = np.exp(3.0 + features @ rng.normal(scale=0.3, size=12))
    regression = SizeRegression.fit(features, truth, alpha=1e-3)
    predicted = np.array([regression.predict(row) for row in features[:50]])
    np.testing.assert_allclose(predicted, truth[:50], rtol=0.01)
    weak = SizeRegression.fit(features, truth, alpha=1e4)  # strong ridge: every guess near the typical size
    spread = np.std(np.log([weak.predict(row) for row in features[:50]]))
    assert spread < 0.5 * np.std(np.log(truth[:50]))


def _with_regression(model, guess: float):
    """`model` carrying a regression that answers `guess` px for any image (weights 0), fitted to its encoder."""
    width = len(PROBE_DIAMETERS) * _features_per_zoom(model)
    regression = SizeRegression({"probe_diameters": PROBE_DIAMETERS, "reference": 50.0, "mean": [0.0] * width,
                                 "scale": [1.0] * width, "weights": [0.0] * width, "bias": float(np.log(guess)),
                                 "fitted_to": encoder_fingerprint(model.network)})
    model.metadata[METADATA_KEY] = regression.to_metadata()
    model.metadata["cell_diameter"] = 50.0
    return model


def _features_per_zoom(model) -> int:
    with torch.no_grad():
        stages = model.network.encoder(torch.zeros(1, 1, 64, 64))
    return sum(stages[s].shape[1] for s in (-2, -1))


def test_estimate_starts_from_the_regression_and_refines_it(tiny_model):
    image, _ = disc_field(9)
    model = _with_regression(tiny_model, 27.0)
    estimate = estimate_cell_diameter(image, model, device="cpu")
    assert estimate.probes[0]["candidate"] == "regression" and estimate.probes[0]["estimate"] == pytest.approx(27.0)
    assert estimate.probes[1]["candidate"] == pytest.approx(27.0)  # one segmentation probe zoomed to the guess
    assert [p["candidate"] for p in estimate.probes[2:6]] == [12.0, 27.0, 60.0, 135.0]  # then the coarse probes
    assert estimate.diameter is not None and estimate.diameter > 0


def _guessing(monkeypatch, guess: float) -> None:
    """Make every model's size regression answer `guess` px (on a network without an encoder)."""
    from napari_cell_unet.inference import diameter

    regression = SizeRegression({"probe_diameters": PROBE_DIAMETERS, "reference": 30.0, "mean": [0.0],
                                 "scale": [1.0], "weights": [0.0], "bias": float(np.log(guess))})
    monkeypatch.setattr(diameter, "size_regression", lambda model, network: regression)
    monkeypatch.setattr(diameter, "size_features", lambda *args, **kwargs: np.zeros(1))


@pytest.mark.parametrize("radius", [5, 9, 16])
def test_a_confirmed_guess_and_the_probes_are_averaged(monkeypatch, radius):
    from napari_cell_unet.inference import diameter

    image, labels = disc_field(radius)
    model = pointwise_model(cell_diameter=30.0)
    probes_alone = estimate_cell_diameter(image, model, device="cpu").diameter  # no size regression
    _guessing(monkeypatch, 1.4 * estimate_diameter(labels))  # 40 % off: the probe zoomed to it finds discs whole
    estimate = estimate_cell_diameter(image, model, device="cpu")
    guess, refinement = estimate.probes[0], estimate.probes[1]
    assert refinement["cells"] >= diameter.CONFIRM_CELLS
    assert guess["estimate"] / refinement["estimate"] > diameter.AGREED  # not close: the coarse probes are asked too
    assert len(estimate.probes) > 2
    learned = np.sqrt(guess["estimate"] * refinement["estimate"])
    assert estimate.diameter == pytest.approx(np.sqrt(learned * probes_alone), abs=0.1)
    assert estimate.diameter == pytest.approx(estimate_diameter(labels), rel=0.15)


@pytest.mark.parametrize("radius", [5, 9, 16])
def test_a_closely_confirmed_guess_skips_the_coarse_probes(monkeypatch, radius):
    from napari_cell_unet.inference import diameter

    image, labels = disc_field(radius)
    _guessing(monkeypatch, 1.05 * estimate_diameter(labels))  # 5 % off: its probe measures the discs within 15 %
    estimate = estimate_cell_diameter(image, pointwise_model(cell_diameter=30.0), device="cpu")
    guess, refinement = estimate.probes
    assert refinement["cells"] >= diameter.CONFIRM_CELLS
    assert estimate.diameter == pytest.approx(np.sqrt(guess["estimate"] * refinement["estimate"]), abs=0.1)
    assert estimate.diameter == pytest.approx(estimate_diameter(labels), rel=0.15)


def test_an_unconfirmed_guess_leaves_the_size_to_the_probes(monkeypatch):
    image, labels = disc_field(9)
    _guessing(monkeypatch, 400.0)  # far too big: zoomed to it, no disc is found whole
    estimate = estimate_cell_diameter(image, pointwise_model(cell_diameter=30.0), device="cpu")
    assert estimate.probes[1]["cells"] < 5
    assert estimate.diameter == pytest.approx(estimate_diameter(labels), rel=0.15)


def test_a_regression_fitted_to_another_encoder_is_not_used(tiny_model, tmp_path):
    from napari_cell_unet.model import load_model, save_model

    model = _with_regression(tiny_model, 27.0)
    saved = load_model(save_model(model, tmp_path / "with_size.safetensors"))
    assert size_regression(saved, saved.network) is not None  # survives the file round trip
    with torch.no_grad():
        next(saved.network.encoder.parameters()).add_(0.01)  # a fine-tune that trained the encoder
    assert size_regression(saved, saved.network) is None
    image, _ = disc_field(9)
    estimate = estimate_cell_diameter(image, saved, device="cpu")
    assert all(probe["candidate"] != "regression" for probe in estimate.probes)  # the probes, as before


@pytest.mark.parametrize("entry", [{"weights": "many"}, [], {"probe_diameters": [1, 2], "reference": 50}])
def test_a_malformed_size_model_entry_falls_back_to_the_probes(tiny_model, entry):
    tiny_model.metadata[METADATA_KEY] = entry
    assert size_regression(tiny_model, tiny_model.network) is None


def test_busiest_windows_are_distinct_and_busiest_first():
    from napari_cell_unet.inference.diameter import _activity, _busiest_windows

    image = np.zeros((400, 600), np.float32)
    image[20:80:4, 400:460] = 1.0  # the busiest texture (stripes)
    image[300:360:6, 50:110] = 1.0  # a sparser one
    corners = _busiest_windows(_activity(image[None]), image.shape, 100, 3)
    assert len(corners) == 3
    (y0, x0), (y1, x1) = corners[:2]
    assert y0 <= 20 < 80 <= y0 + 100 and x0 <= 400 < 460 <= x0 + 100
    assert y1 <= 300 < 360 <= y1 + 100 and x1 <= 50 < 110 <= x1 + 100
    for i, (ya, xa) in enumerate(corners):
        for yb, xb in corners[i + 1:]:
            assert abs(ya - yb) >= 100 or abs(xa - xb) >= 100  # no two overlap
    only = _busiest_windows(_activity(image[None]), image.shape, 400, 3)
    assert len(only) == 1 and only[0][0] == 0  # a second 400-px square would overlap the first


def test_a_probe_leader_its_refinement_does_not_confirm_gives_way_to_a_confirmed_guess(monkeypatch):
    """set27 at 1x (validation): the 12-px probe voted for 21 fragments of 7 px, whose 7-px refinement found 2-px
    ones; averaged with the confirmed guess (52 px) that made 22 px for 63-px cells."""
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import diameter

    def canned(predictor, plane, rgb, ranges, activity, candidate, reference, side, thresholds):
        found = {12.0: (21, 7.0), 7.0: (14, 2.0)}.get(round(candidate, 1), (0, float("nan")))
        return {"candidate": round(candidate, 1), "cells": found[0], "estimate": found[1], "confidence": 0.9}

    monkeypatch.setattr(diameter, "_probe", canned)
    context = (None, np.zeros((64, 64)), False, None, None, None, 50.0)
    trusted = result_of(diameter._iter_probed(*context))
    assert trusted.diameter == pytest.approx(np.sqrt(12.0 * 7.0), abs=0.1)  # alone, the leader is all there is
    assert result_of(diameter._iter_probed(*context, unrefined_leader=False)).diameter is None
