"""The correction loop never makes the model worse without saying so (issue 8).

Small crops of real Usiigaci data and a few steps, so each test takes seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_usiigaci_set

CROP = (slice(0, 256), slice(0, 256))


@pytest.fixture(scope="module")
def held_out_crop(shared_data):
    """A crop of set29 (held out from the bundled model's training) with half its cells painted."""
    data = load_usiigaci_set("set29")
    image, truth = data["image"][CROP], data["labels"][CROP]
    painted_ids = np.unique(truth)[1::2]
    return image, truth, np.where(np.isin(truth, painted_ids), truth, 0)


def test_annotated_scores_ignore_unpainted_cells():
    from napari_cell_unet.metrics import annotated_scores

    truth = np.zeros((40, 60), np.int32)
    truth[5:15, 5:15] = 1  # painted
    region = np.zeros_like(truth, bool)
    region[0:20, 0:20] = True
    pred = np.zeros_like(truth)
    pred[5:15, 5:15] = 1  # right
    pred[25:35, 40:50] = 2  # an unpainted cell far outside the region: not judged
    pred[14:24, 14:24] = 3  # mostly outside the region but touching the painted cell: judged, wrong
    assert annotated_scores(pred, truth, region)["fp"] == 1
    pred[pred == 3] = 0
    pred[5:15, 5:15] = 1
    scores = annotated_scores(pred, truth, region)
    assert scores["f1"] == 1.0 and scores["dice"] == 1.0
    assert annotated_scores(pred, truth)["fp"] == 1  # without a region, every cell counts


def test_validation_before_any_step_equals_the_base_models_score(held_out_crop):
    """Step 0 is the base model scored exactly as Segment would run it, on the same pixels."""
    import napari_cell_unet as cu
    from napari_cell_unet.metrics import annotated_scores
    from napari_cell_unet.training import TrainConfig, TrainingPair, painted_region, train

    image, _, painted = held_out_crop
    region = painted_region(painted, 16)
    val = TrainingPair(image[:, 128:], painted[:, 128:], region=region[:, 128:])
    fit = TrainingPair(image[:, :128], painted[:, :128], region=region[:, :128])
    base = cu.load_model()
    result = train([fit], base, TrainConfig(steps=1, batch_size=1, crop_size=64, validations=1, distill=0.0,
                                                       match_model_diameter=False), val_pairs=[val])
    step0 = result.history[0]
    expected = annotated_scores(cu.segment(val.image, base, diameter=None), val.labels, val.region)
    assert step0["event"] == "validation" and step0["step"] == 0
    assert step0["f1"] == expected["f1"] and step0["dice"] == expected["dice"]
    assert result.base_metrics["f1"] == expected["f1"]
    assert result.held_out_cells < 8 and result.improved is None  # too few held-back cells to call it better


def test_a_model_worse_than_its_start_is_reported(held_out_crop):
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    image, truth, _ = held_out_crop
    data = load_usiigaci_set("set29")
    val = TrainingPair(data["image"][256:768, 256:768], data["labels"][256:768, 256:768])
    wrecking = TrainConfig(steps=3, batch_size=2, crop_size=64, lr=2.0, validations=1, augment=False)
    result = train([TrainingPair(image, truth)], "default", wrecking, val_pairs=[val])
    assert result.held_out_cells >= 8 and result.improved is False
    assert result.metrics["f1"] + result.metrics["dice"] < result.base_metrics["f1"] + result.base_metrics["dice"]
    assert result.model.metadata["training"]["improved"] is False


def test_single_image_holds_out_where_the_labels_were_corrected():
    from napari_cell_unet.training.validation import split_validation
    from napari_cell_unet.training import TrainingPair

    labels = np.zeros((100, 400), np.int32)
    labels[20:60, 20:60] = 1
    labels[20:60, 110:150] = 2  # the cell the base model missed
    base_cells = np.zeros(labels.shape, bool)
    base_cells[20:60, 20:60] = True
    pair = TrainingPair(np.random.default_rng(0).random(labels.shape), labels)
    train_parts, val = split_validation([pair], None, 0.2, 0, base_cells=lambda p: base_cells)
    assert val[0].labels.max() == 2 and val[0].image.shape == (100, 80)
    assert not train_parts[0].region[:, 110:150].any()
    assert val[0].source is pair.image  # normalised with the whole image's range, as inference does


def test_partial_region_strip_holds_a_share_of_the_painted_cells():
    from napari_cell_unet.training import TrainingPair, painted_region
    from napari_cell_unet.training.validation import split_validation

    labels = np.zeros((100, 500), np.int32)
    for n, x in enumerate(range(10, 490, 50)):
        labels[30:60, x:x + 30] = n + 1
    pair = TrainingPair(np.random.default_rng(0).random(labels.shape), labels, region=painted_region(labels, 8))
    (train_part,), (val,) = split_validation([pair], None, 0.2, 0)
    held = len(np.unique(val.labels)) - 1
    assert 1 <= held <= 3
    assert train_part.region.sum() + val.region.sum() == pair.region.sum()


def test_cli_defaults_are_the_api_defaults():
    import argparse

    from napari_cell_unet.cli import train as cli_train
    from napari_cell_unet.training import TrainConfig

    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    args = parser.parse_args(["--images", "a.tif", "--labels", "b.png", "--output", "m.safetensors"])
    defaults = TrainConfig()
    assert (args.lr, args.val_fraction, args.crop_size, args.batch_size) == (
        defaults.lr, defaults.val_fraction, defaults.crop_size, defaults.batch_size)


def test_a_model_fine_tuned_from_the_bundled_one_keeps_its_cell_size_measure(held_out_crop):
    """Fine-tuning on a few cells moves a model's response at the probes' zooms; its cell size is measured by the
    bundled model it came from, so a correction does not change the zoom of every other image."""
    import torch

    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment
    from napari_cell_unet.inference.diameter import estimate_cell_diameter
    from napari_cell_unet.model.files import BUNDLED_PROBES, bundled_model, descends_from_bundled
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    image, truth, _ = held_out_crop
    tuned = train([TrainingPair(image, truth)], "default",
                  TrainConfig(steps=1, batch_size=1, crop_size=64, val_fraction=0.0)).model
    assert tuned.metadata["diameter_model"] == BUNDLED_PROBES and descends_from_bundled(tuned)
    assert descends_from_bundled(bundled_model().copy())
    with torch.no_grad():  # a fine-tuning that went far: the decoder's last layers changed
        for parameter in list(tuned.network.parameters())[-6:]:
            parameter.mul_(1.3)
    drifted = tuned.copy()
    drifted.metadata.pop("diameter_model")
    assert not descends_from_bundled(drifted)  # the weights, not the name, tell
    unseen = image[::-1].copy()  # the same cells, other pixels: not the image it was fine-tuned on
    expected = estimate_cell_diameter(unseen, bundled_model(), device="cpu").diameter
    result = result_of(iter_segment(unseen, tuned, device="cpu"))
    assert result.diameter == pytest.approx(expected)
    own = estimate_cell_diameter(unseen, drifted, device="cpu").diameter
    assert own != pytest.approx(expected)  # without it the drifted model would have measured another size


def test_anchored_fine_tuning_keeps_the_weights_near_the_start(held_out_crop):
    """The anchor undoes part of each step's drift from the starting weights: what keeps other images as they were."""
    import torch

    from napari_cell_unet.model.files import bundled_model
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    image, truth, _ = held_out_crop
    start = [p.detach().clone() for p in bundled_model().network.parameters()]

    def drift(anchor: float) -> float:
        config = TrainConfig(steps=4, batch_size=1, crop_size=64, val_fraction=0.0, lr=1e-3, anchor=anchor)
        tuned = train([TrainingPair(image, truth)], "default", config).model
        assert tuned.metadata["training"]["config"]["anchor"] == anchor
        return float(sum(torch.sum((p.detach() - s) ** 2) for p, s in zip(tuned.network.parameters(), start)))

    free, anchored = drift(0.0), drift(0.3)
    assert 0 < anchored < 0.5 * free
    assert TrainConfig().anchor > 0  # on by default when fine-tuning


def test_fine_tuning_keeps_part_of_the_change_unless_the_held_back_cells_want_all_of_it(held_out_crop, monkeypatch):
    """The kept model is start + blend x (trained - start); when the held-back cells score that blend lower than the
    whole change, the whole change is kept, and the before -> after the widget shows is that of the kept model."""
    import torch

    from napari_cell_unet.model.files import bundled_model
    from napari_cell_unet.training import TrainConfig, TrainingPair, loop, train

    image, truth, _ = held_out_crop
    start = [p.detach().clone() for p in bundled_model().network.parameters()]

    def weights(**settings):
        config = TrainConfig(steps=3, batch_size=1, crop_size=64, val_fraction=0.0, lr=1e-3, seed=1, threads=1,
                             **settings)
        tuned = train([TrainingPair(image, truth)], "default", config).model
        return [p.detach() for p in tuned.network.parameters()], tuned.metadata["training"]

    whole, record = weights(blend=1.0)
    assert record["kept_change"] == 1.0
    part, record = weights()
    fraction = TrainConfig().blend
    assert 0 < fraction < 1 and record["kept_change"] == fraction
    moved = [not torch.equal(w, s) for w, s in zip(whole, start)]
    assert any(moved)
    for w, h, s in zip(whole, part, start):
        torch.testing.assert_close(h, s + fraction * (w - s), atol=1e-6, rtol=1e-5)

    # with held-back cells: the blend is validated, and kept only when its F1 is no lower than the whole change's
    scores = iter([0.5, 0.9, 0.6])  # the starting model's, the trained step's, then the blend's

    def fake_validate(*args, **kwargs):
        return {"val_loss": 1.0, "dice": 0.8, "f1": next(scores, 0.9)}

    monkeypatch.setattr(loop, "validate", fake_validate)
    config = TrainConfig(steps=2, batch_size=1, crop_size=64, val_fraction=0.3, lr=1e-3, validations=1, threads=1)
    result = train([TrainingPair(image, truth)], "default", config)
    assert result.model.metadata["training"]["kept_change"] == 1.0
    assert result.metrics["f1"] == 0.9 and next(scores, None) is None  # all three validations ran
    scores = iter([0.5, 0.8, 0.85])
    result = train([TrainingPair(image, truth)], "default", config)
    assert result.model.metadata["training"]["kept_change"] == fraction and result.metrics["f1"] == 0.85


def test_a_model_is_not_called_better_when_the_f1_it_shows_dropped():
    """The widget shows 'F1 on your held-back cells: before -> after'; a lower F1 is never selected by itself,
    even when Dice rose enough to lift the combined score."""
    from napari_cell_unet.training.validation import improvement

    base = {"f1": 0.57, "dice": 0.80, "val_loss": 1.0}
    assert improvement(base, {"f1": 0.56, "dice": 0.85, "val_loss": 0.9}, held_out=20) is False
    assert improvement(base, {"f1": 0.57, "dice": 0.81, "val_loss": 0.9}, held_out=20) is True
    assert improvement(base, {"f1": 0.60, "dice": 0.80, "val_loss": 1.1}, held_out=20) is True
    assert improvement(base, {"f1": 0.70, "dice": 0.90, "val_loss": 0.5}, held_out=3) is None


def test_an_image_the_model_was_fine_tuned_on_keeps_the_size_of_its_annotated_cells(held_out_crop, tmp_path):
    """A fine-tuned model remembers the median size of the cells annotated on each training image; segmenting that
    very image uses it (so painting the cells of an image whose size the probes misjudge fixes that image); any other
    image is measured by the probes."""
    import napari_cell_unet as cu
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import estimate_diameter, iter_segment
    from napari_cell_unet.inference.segment import TAUGHT
    from napari_cell_unet.inference.taught_diameters import METADATA_KEY, fingerprint
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    image, _, painted = held_out_crop
    tuned = train([TrainingPair(image, painted)], "default",
                  TrainConfig(steps=1, batch_size=1, crop_size=64, val_fraction=0.0)).model
    entry = tuned.metadata[METADATA_KEY][fingerprint(image)]
    assert entry["diameter"] == pytest.approx(estimate_diameter(painted), abs=0.01)
    entry["diameter"] = 3.0 * entry["diameter"]  # far from anything the probes would measure: only memory gives it
    result = result_of(iter_segment(image, tuned, device="cpu"))
    assert result.diameter_estimate.source == TAUGHT and result.diameter == pytest.approx(entry["diameter"])
    stack = np.stack([image[::-1], image])  # the annotated plane inside a stack
    assert result_of(iter_segment(stack, tuned, device="cpu")).diameter == pytest.approx(entry["diameter"])
    other = result_of(iter_segment(image[::-1].copy(), tuned, device="cpu"))  # other pixels: the probes measure
    assert other.diameter_estimate.source == "probes" and other.diameter != pytest.approx(entry["diameter"])
    assert result_of(iter_segment(image, tuned, device="cpu", diameter=30.0)).diameter == 30.0  # a number wins
    cu.save_model(tuned, tmp_path / "tuned.safetensors")  # the sizes travel with the model file
    reloaded = cu.load_model(tmp_path / "tuned.safetensors")
    assert result_of(iter_segment(image, reloaded, device="cpu")).diameter == pytest.approx(entry["diameter"])


def test_a_few_painted_cells_size_their_image_only_where_the_estimate_failed(held_out_crop):
    """Near the automatic estimate, the median of fewer than `TRUSTED_CELLS` painted cells is less exact than the
    estimate, which is kept; a median of many cells, or one 1.5x away from the estimate, wins."""
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment
    from napari_cell_unet.inference.segment import TAUGHT, TRUSTED_CELLS
    from napari_cell_unet.inference.taught_diameters import METADATA_KEY, fingerprint
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    image, _, painted = held_out_crop
    tuned = train([TrainingPair(image, painted)], "default",
                  TrainConfig(steps=1, batch_size=1, crop_size=64, val_fraction=0.0)).model
    entry = tuned.metadata[METADATA_KEY].pop(fingerprint(image))
    estimated = result_of(iter_segment(image, tuned, device="cpu")).diameter
    tuned.metadata[METADATA_KEY][fingerprint(image)] = entry
    for factor, cells, source in ((1.2, TRUSTED_CELLS - 1, "probes"), (1.2, TRUSTED_CELLS, TAUGHT),
                                  (1.6, 5, TAUGHT), (1 / 1.6, 5, TAUGHT)):
        entry.update(diameter=factor * estimated, cells=cells)
        result = result_of(iter_segment(image, tuned, device="cpu"))
        assert result.diameter_estimate.source == source, (factor, cells)
        assert result.diameter == pytest.approx(estimated if source == "probes" else factor * estimated)


def test_remembered_sizes_need_enough_cells_and_stay_bounded():
    from napari_cell_unet.inference import taught_diameters as taught

    labels = np.zeros((60, 300), np.int32)
    for n in range(6):
        labels[10:30, 10 + 45 * n:30 + 45 * n] = n + 1
    metadata: dict = {}
    few = np.where(labels <= 4, labels, 0)
    taught.remember(metadata, [(np.zeros((60, 300), np.uint8), few)])
    assert taught.METADATA_KEY not in metadata  # 4 cells: not enough to trust their median
    images = [np.full((60, 300), n, np.uint16) for n in range(taught.MAX_REMEMBERED + 3)]
    taught.remember(metadata, [(image, labels) for image in images])
    known = metadata[taught.METADATA_KEY]
    assert len(known) == taught.MAX_REMEMBERED and taught.fingerprint(images[0]) not in known
    assert known[taught.fingerprint(images[-1])]["cells"] == 6
    assert taught.fingerprint(images[1]) != taught.fingerprint(images[1].astype(np.uint8))
    from types import SimpleNamespace  # a model file that wrote something else there is ignored, not a crash

    image = images[-1]
    for junk in (["a list"], {taught.fingerprint(image): "text"}, {taught.fingerprint(image): {"diameter": "nan?"}},
                 {taught.fingerprint(image): {"diameter": -3.0, "cells": 6}}):
        assert taught.taught_diameter(SimpleNamespace(metadata={taught.METADATA_KEY: junk}), image, [()]) is None
    model = SimpleNamespace(metadata=metadata)
    assert taught.taught_diameter(model, image, [()]) == (known[taught.fingerprint(image)]["diameter"], 6)
