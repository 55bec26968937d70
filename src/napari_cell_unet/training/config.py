"""How to train: `TrainConfig`, and what a training run may start from (`ModelSpec`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Union

from ..model import CellModel

ModelSpec = Union[str, os.PathLike, CellModel]
# Adam moves every weight by about the learning rate per step whatever the gradient: on a few crops of one image
# 1e-3 changes the bundled model's instance calibration everywhere (held-out F1 down within 10 steps)
FINE_TUNING_LR = 1e-4


@dataclass
class TrainConfig:
    """How to train. Give `steps`, `epochs` or `minutes` (a wall-clock budget); none = 100 steps.

    An epoch is as many crops as cover the annotated pixels of the training pairs once.
    """

    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    batch_size: int | None = None  # None: 8 on a GPU, 4 on the CPU
    crop_size: int | None = None  # None: 256 on a GPU, 128 on the CPU (keeps CPU fine-tuning near 0.5 s/step)
    lr: float | None = None  # None: 1e-4 when fine-tuning (measured: issue 8, benchmarks/RESULTS.md), 1e-3 from scratch
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    val_fraction: float = 0.2
    validations: int = 10  # validations over the run (when validate_every is None); 0 = none, keep the last model
    validate_every: int | None = None  # steps between validations
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    border_weight: float = 1.0
    border_thickness: int = 2
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads while training (None: torch's default)
    amp: bool = True  # mixed precision: CUDA (bf16 where supported, else fp16 with a GradScaler), bf16 on native-bf16 CPUs
    augment: bool = True
    scale_range: tuple[float, float] = (1.0, 1.0)  # zoom augmentation of crops (log-uniform); (1, 1) = off
    # fine-tuning: zoom each pair so its cells have the model's cell_diameter, as inference does
    match_model_diameter: bool = True
    # train only the decoder: about twice as fast on a CPU. None = freeze when fine-tuning a
    # trained model on the CPU (not when training from scratch or on a GPU)
    freeze_encoder: bool | None = None
    # keep every batch-norm layer's statistics fixed (eval mode) while training. None = when fine-tuning
    freeze_batchnorm: bool | None = None
    # weight of the base model's own predictions as soft targets outside the annotated region of a
    # partially annotated pair (keeps what was not painted as the base model had it); 0 = off
    distill: float = 1.0
    # fine-tuning: after each step, this fraction of every trained weight's drift from the starting model is
    # undone (weight decay towards the start, decoupled as in AdamW), so one image's corrections cannot carry
    # the weights far and other images keep what the model knew (issue 8: chosen on the validation sets,
    # benchmarks/RESULTS.md); 0 = off. Not used when training from scratch
    anchor: float = 0.05
    # fine-tuning: the model kept is the starting one plus this fraction of the best step's change of the weights
    # (weight-space interpolation, as WiSE-FT), unless the held-back cells score the whole change higher; 1 = keep
    # the whole change. What one image's corrections cost other experiments falls to the measurement's floor with the
    # corrected images' gain kept (0.35 chosen over 0.5 on the validation sets, issue 8, benchmarks/RESULTS.md).
    # Not used when training from scratch
    blend: float = 0.35
    # in a partially annotated pair, a cell the base model finds that overlaps no painted cell is left out
    # of the region (it keeps the base model's prediction) instead of being taught as background
    protect_unpainted: bool = True
    architecture: dict[str, Any] | None = None  # for model="scratch"; None = the default architecture
    name: str | None = None  # name of the trained model
