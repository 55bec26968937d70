"""The default model's training recipe (scripts/train_default_all_data.py) trains the whole network freely and
leaves none of the fine-tuning engine's records in a default."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO, load_small_set

SCRIPT = REPO / "scripts" / "train_default_all_data.py"


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("train_default_all_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drift(start, model) -> float:
    state = model.network.state_dict()
    return float(sum((state[k].float() - v.float()).norm() ** 2 for k, v in start.items()
                     if v.is_floating_point() and "running" not in k) ** 0.5)


def test_recipe_is_not_pulled_back_to_its_starting_weights(recipe, tiny_model):
    """The library's fine-tuning default pulls the weights towards the start after every step (right for a few
    painted corrections); the stage-4 run of this recipe inherited it and stayed next to stage 3. The recipe's
    config must move as far as the same run without that pull, and further than with it."""
    from napari_cell_unet.training import TrainingPair, train

    data = load_small_set("set19")
    pair = TrainingPair(data["image"][:192, :192], data["labels"][:192, :192])
    args = recipe.parse_args(["--steps", "4", "--batch-size", "2", "--crop-size", "64", "--validations", "0",
                              "--threads", "1", "--scale-range", "1", "1", "--device", "cpu"])
    config = recipe.recipe_config(args)
    assert config.anchor == 0 and config.blend == 1.0 and config.freeze_encoder is False and config.freeze_batchnorm is False
    start = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    free = train([pair], tiny_model, config).model
    pulled = train([pair], tiny_model, config.__class__(**{**vars(config), "anchor": 0.5})).model
    assert _drift(start, free) > 1.5 * _drift(start, pulled) > 0


def test_a_trained_default_remembers_no_image_and_is_sized_by_itself(recipe, tiny_model):
    tiny_model.metadata.update(diameter_model="bundled", taught_diameters={"abc": [30.0, 12]},
                               size_model={"fitted_to": "another encoder"}, cell_diameter=31.0)
    recipe.as_default_model(tiny_model)
    assert tiny_model.metadata["cell_diameter"] == recipe.REFERENCE_DIAMETER
    assert not {"diameter_model", "taught_diameters", "size_model"} & set(tiny_model.metadata)
