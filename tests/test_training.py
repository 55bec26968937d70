"""Training engine: border targets, partial annotation, learning on real data, fine-tuning, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_ARCHITECTURE, load_small_set, load_usiigaci_set


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train faster on one thread, and far faster when other jobs share the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- targets
def _two_touching_squares() -> np.ndarray:
    labels = np.zeros((20, 30), np.uint8)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    return labels


def test_border_between_touching_squares_straddles_the_shared_edge():
    from napari_cell_unet.training import derive_borders

    borders = derive_borders(_two_touching_squares(), thickness=2)
    assert borders[10, 14] and borders[10, 15]  # both sides of the cell/cell edge
    assert not borders[10, 13] and not borders[10, 16]
    assert borders[4, 10] and borders[5, 10]  # outside and inside of the top edge
    assert not borders[3, 10] and not borders[6, 10]
    assert not borders[10, 10] and not borders[0, 0]
    # two pixels wide across every straight edge
    assert borders[10, :].sum() == 6  # left edge 4|5, shared 14|15, right 24|25


def test_border_thickness_widens_symmetrically():
    from napari_cell_unet.training import derive_borders

    labels = _two_touching_squares()
    inner = derive_borders(labels, thickness=1)
    thick = derive_borders(labels, thickness=2)
    wide = derive_borders(labels, thickness=4)
    assert inner[10, 14] and inner[10, 15] and not inner[4, 10]  # cell pixels only
    assert inner.sum() < thick.sum() < wide.sum()
    assert wide[10, 13] and wide[10, 16] and wide[3, 10]
    assert (thick & ~wide).sum() == 0


def test_binary_mask_is_split_into_connected_components():
    from napari_cell_unet.training import as_instance_labels, derive_borders

    mask = np.zeros((20, 30), bool)
    mask[2:8, 2:8] = True
    mask[10:18, 12:28] = True
    instances = as_instance_labels(mask)
    assert instances.max() == 2
    assert np.array_equal(derive_borders(mask), derive_borders(instances))
    assert np.array_equal(as_instance_labels(mask.astype(np.uint8) * 255), instances)


def test_painted_border_is_added_to_the_derived_one():
    from napari_cell_unet.training import make_targets

    labels = _two_touching_squares()
    painted = np.zeros(labels.shape, bool)
    painted[10, 8:11] = True  # a stroke inside cell 1
    _, cell, border = make_targets(labels, painted)
    assert border[10, 9] and border[10, 14] and border[10, 15]
    assert cell.sum() == 200


def test_derived_borders_are_consistent_with_usiigaci_border_masks():
    """Where the data has feature_0.png, the derived border covers it and is about as thin."""
    from napari_cell_unet.training import derive_borders

    data = load_small_set("set18")
    derived = derive_borders(data["labels"])
    painted = data["borders"]
    covered = (derived & painted).sum() / painted.sum()
    assert covered > 0.85
    assert 1.0 < derived.sum() / painted.sum() < 2.5


# ---------------------------------------------------------------- pairs
def test_training_pair_rejects_mismatched_shapes():
    from napari_cell_unet.training import TrainingDataError, TrainingPair

    with pytest.raises(TrainingDataError, match="labels shape"):
        TrainingPair(np.zeros((10, 10)), np.zeros((10, 12), np.uint8))
    with pytest.raises(TrainingDataError, match="region"):
        TrainingPair(np.zeros((10, 10)), np.zeros((10, 10), np.uint8), region=np.zeros((10, 10), bool))


def test_painted_region_surrounds_painted_cells():
    from napari_cell_unet.training import painted_region

    labels = np.zeros((50, 50), np.uint8)
    labels[20:25, 20:25] = 3
    region = painted_region(labels, margin=5)
    assert region[20, 20] and region[15, 22] and not region[14, 22] and not region[0, 0]


def test_single_image_validation_holds_out_a_strip():
    from napari_cell_unet.training import TrainingPair
    from napari_cell_unet.training.validation import split_validation

    pair = TrainingPair(np.random.rand(120, 300), np.ones((120, 300), np.uint8), name="one")
    train, val = split_validation([pair], None, 0.2, seed=0)
    assert val[0].shape == (120, 64 if 60 < 64 else 60)
    assert not train[0].region[:, -val[0].shape[1]:].any() and train[0].region[:, :200].all()


# ---------------------------------------------------------------- loss / partial annotation
def test_no_loss_and_no_gradient_outside_the_annotated_region():
    import torch

    from napari_cell_unet.training.losses import segmentation_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    targets = (torch.rand(2, 2, 32, 32) > 0.5).float()
    region = torch.zeros(2, 1, 32, 32)
    region[..., :16] = 1
    loss = segmentation_loss(logits, targets, region)
    loss.backward()
    assert logits.grad[..., 16:].abs().max() == 0
    assert logits.grad[..., :16].abs().max() > 0
    flipped = targets.clone()
    flipped[..., 16:] = 1 - flipped[..., 16:]  # e.g. unpainted cells called background or not
    assert torch.isclose(segmentation_loss(logits.detach(), flipped, region), loss.detach())


def _real_crop(size: int = 256):
    data = load_small_set("set18")
    window = (slice(300, 300 + size), slice(300, 300 + size))
    return data["image"][window], data["labels"][window], data["borders"][window]


def _tiny(seed: int = 0):
    import torch

    from napari_cell_unet.model import CellModel

    torch.manual_seed(seed)
    return CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny-test")


def _fast_config(**overrides):
    from napari_cell_unet.training import TrainConfig

    # blend=1: these tests train tiny random models and check what the steps do; keeping half of the change
    # (the fine-tuning default) is tested in test_correction_loop.py
    settings = dict(steps=20, batch_size=4, crop_size=64, lr=3e-3, val_fraction=0.0, device="cpu", seed=0,
                    freeze_encoder=False, blend=1.0)
    settings.update(overrides)
    return TrainConfig(**settings)


def _full_loss(model, image, labels, borders) -> float:
    import torch

    from napari_cell_unet.training.loop import _normalized
    from napari_cell_unet.training.losses import segmentation_loss
    from napari_cell_unet.training.targets import make_targets

    _, cell, border = make_targets(labels, borders)
    x = torch.from_numpy(_normalized(image, model))[None]
    y = torch.from_numpy(np.stack([cell, border]).astype(np.float32))[None]
    model.network.eval()
    with torch.no_grad():
        return float(segmentation_loss(model.network(x), y, torch.ones(1, 1, *cell.shape)))


def test_a_few_steps_reduce_the_loss_on_real_data():
    from napari_cell_unet.training import TrainingPair, train

    image, labels, borders = _real_crop()
    model = _tiny()
    before = _full_loss(model, image, labels, borders)
    result = train([TrainingPair(image, labels, borders)], model, _fast_config(steps=25))
    after = _full_loss(result.model, image, labels, borders)
    assert after < 0.9 * before
    record = result.model.metadata["training"]
    assert record["steps"] == 25 and record["config"]["crop_size"] == 64 and "machine" in record
    assert len([h for h in result.history if h["event"] == "step"]) == 25
    assert _full_loss(model, image, labels, borders) == pytest.approx(before)  # the input model is untouched


def test_fine_tuning_starts_from_the_saved_weights(tmp_path):
    import torch

    from napari_cell_unet.model import save_model
    from napari_cell_unet.training import TrainingPair, train

    image, labels, borders = _real_crop(128)
    saved = _tiny(seed=1)
    path = save_model(saved, tmp_path / "start.safetensors")
    result = train([TrainingPair(image, labels, borders)], path, _fast_config(steps=2, lr=1e-7))
    tuned = dict(result.model.network.named_parameters())
    start = dict(saved.network.named_parameters())
    scratch = dict(_tiny(seed=2).network.named_parameters())
    name = next(iter(start))
    assert torch.allclose(tuned[name], start[name], atol=1e-4)
    assert not torch.allclose(scratch[name], start[name], atol=1e-4)
    assert result.model.metadata["training"]["init"] == str(path)


def test_frozen_encoder_changes_only_the_decoder():
    import torch

    from napari_cell_unet.training import TrainingPair, train

    image, labels, borders = _real_crop(128)
    start = _tiny()
    tuned = train([TrainingPair(image, labels, borders)], start, _fast_config(steps=3, freeze_encoder=True)).model
    before, after = start.network.state_dict(), tuned.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))  # BN stats too
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert all(p.requires_grad for p in tuned.network.parameters())
    assert tuned.metadata["training"]["freeze_encoder"] is True


def test_cancel_keeps_the_best_model():
    import torch

    from napari_cell_unet.training import TrainingPair, Trainer, Validation

    image, labels, borders = _real_crop(256)
    pair = TrainingPair(image, labels, borders)
    trainer = Trainer([pair], _tiny(), _fast_config(steps=1000, validate_every=3, val_fraction=0.3))
    events = trainer.events()
    best_state, best_step, validations = None, None, 0
    for event in events:
        if isinstance(event, Validation):
            validations += 1
            if event.is_best:
                best_step = event.step
                best_state = {k: v.clone() for k, v in trainer.model.network.state_dict().items()}
            if validations == 3:
                break
    events.close()  # the consumer walks away mid-run
    result = trainer.result
    assert result.cancelled and result.best_step == best_step
    for key, value in result.model.network.state_dict().items():
        assert torch.equal(value, best_state[key]), key
    assert result.model.device.type == "cpu" and not result.model.network.training


def test_should_stop_ends_with_a_result():
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.training import TrainingPair, TrainResult, TrainStep, iter_train

    image, labels, borders = _real_crop(128)
    events = []
    result = result_of(iter_train([TrainingPair(image, labels, borders)], _tiny(), _fast_config(steps=500),
                                  should_stop=lambda: sum(isinstance(e, TrainStep) for e in events) >= 3),
                       on_event=events.append)
    assert isinstance(result, TrainResult) and result.cancelled
    assert not any(isinstance(e, TrainResult) for e in events)
    assert sum(isinstance(e, TrainStep) for e in events) == 3 and result.model.metadata["training"]["steps"] == 3


def test_partially_annotated_cells_are_not_learned_as_background():
    """Cells left unpainted (outside the region) keep higher cell probability than when they
    are labelled as background everywhere."""
    import torch

    from napari_cell_unet.training import TrainingPair, painted_region, train
    from napari_cell_unet.training.loop import _normalized

    image, labels, _ = _real_crop(256)
    ids = np.unique(labels[labels > 0])
    unpainted = np.isin(labels, ids[::2])
    painted_labels = np.where(unpainted, 0, labels)
    region = painted_region(painted_labels, margin=4) & ~unpainted

    def cell_probability_on_unpainted(pair_region):
        pair = TrainingPair(image, painted_labels, region=pair_region)
        # the region alone: no anchor or distillation towards an untrained start
        model = train([pair], _tiny(), _fast_config(steps=30, lr=5e-3, anchor=0.0, distill=0.0)).model
        with torch.no_grad():
            prob = torch.sigmoid(model.network(torch.from_numpy(_normalized(image, model))[None]))[0, 0].numpy()
        return prob[unpainted].mean()

    kept, taught_background = cell_probability_on_unpainted(region), cell_probability_on_unpainted(None)
    assert kept > taught_background + 0.05, (kept, taught_background)


def test_pairs_from_a_dataset_folder_and_from_files(tmp_path, shared_data):
    import tifffile
    from PIL import Image

    from napari_cell_unet.training import pairs_from_files, pairs_from_folder

    for sub in ("images", "labels", "borders"):
        (tmp_path / sub).mkdir()
    window = (slice(0, 200), slice(0, 240))
    for name in ("set18", "set2"):
        data = load_usiigaci_set(name)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", data["image"][window])
        Image.fromarray(data["labels"][window]).save(tmp_path / "labels" / f"{name}.png")
        if "borders" in data:
            Image.fromarray(data["borders"][window].astype(np.uint8) * 255).save(tmp_path / "borders" / f"{name}.png")
    pairs = {p.name: p for p in pairs_from_folder(tmp_path)}
    assert set(pairs) == {"set18.tif", "set2.tif"}
    assert pairs["set2.tif"].borders is None and pairs["set18.tif"].borders is not None
    assert np.array_equal(pairs["set18.tif"].labels, load_usiigaci_set("set18")["labels"][window])
    same = pairs_from_files([tmp_path / "images" / "set18.tif"], [tmp_path / "labels" / "set18.png"],
                            [tmp_path / "borders" / "set18.png"])
    assert np.array_equal(same[0].borders, pairs["set18.tif"].borders)


def test_models_record_their_training_cell_diameter():
    """From scratch: the labels' median diameter (the reference for diameter= at inference); fine-tuned: kept."""
    from napari_cell_unet.inference import estimate_diameter
    from napari_cell_unet.training import TrainingPair, train

    image, labels, borders = _real_crop()
    scratch = train([TrainingPair(image, labels, borders)], "scratch",
                    _fast_config(steps=2, architecture=dict(TINY_ARCHITECTURE))).model
    assert scratch.metadata["cell_diameter"] == pytest.approx(estimate_diameter(labels), rel=1e-3)
    base = _tiny()
    base.metadata["cell_diameter"] = 31.0
    tuned = train([TrainingPair(image, labels, borders)], base, _fast_config(steps=2)).model
    assert tuned.metadata["cell_diameter"] == 31.0


def test_pairs_from_files_with_the_same_file_name_get_distinct_names(tmp_path):
    import tifffile

    from napari_cell_unet.training import pairs_from_files

    images, labels = [], []
    for folder in ("set5", "set13"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "raw.tif", np.random.default_rng(0).random((32, 32), dtype=np.float32))
        tifffile.imwrite(tmp_path / folder / "labels.tif", np.pad(np.ones((8, 8), np.uint8), 12))
        images.append(tmp_path / folder / "raw.tif")
        labels.append(tmp_path / folder / "labels.tif")
    assert [p.name for p in pairs_from_files(images, labels)] == ["set5/raw.tif", "set13/raw.tif"]
    assert [p.name for p in pairs_from_files(images[:1], labels[:1])] == ["raw.tif"]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_training_autocasts_to_bf16_only_where_the_cpu_does_it_natively(monkeypatch, tmp_path, native_bf16):
    """Emulated bf16 is ~300x slower than fp32: only a CPU with AVX512-BF16/AMX gets it (and channels-last)."""
    import torch

    from napari_cell_unet.model import load_model, save_model
    from napari_cell_unet.training import TrainingPair, loop, train

    monkeypatch.setattr(loop, "native_bf16_cpu", lambda: native_bf16)
    expected = torch.bfloat16 if native_bf16 else torch.float32
    image, labels, borders = _real_crop(128)
    model = _tiny()
    forwards: list[tuple[torch.dtype, bool]] = []

    def record(network, inputs, output):
        if not network.training:  # the size check's predictions before training (eval-mode copies)
            return
        weight = next(p for p in network.parameters() if p.ndim == 4 and p.shape[1] > 1)
        forwards.append((output.dtype, weight.is_contiguous(memory_format=torch.channels_last)))

    model.network.register_forward_hook(record)
    result = train([TrainingPair(image, labels, borders)], model, _fast_config(steps=1, batch_size=1, crop_size=32))
    assert forwards == [(expected, native_bf16)]
    assert np.isfinite(result.history[-1]["loss"])
    save_model(result.model, tmp_path / "m.safetensors")  # weights back in the plain layout
    assert load_model(tmp_path / "m.safetensors").network.state_dict().keys() == model.network.state_dict().keys()
