"""What a training run yields (`TrainStep`, `Validation`, with `Progress`) and returns (`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .._progress import Progress
from ..model import CellModel


@dataclass
class TrainStep:
    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float


@dataclass
class Validation:
    step: int
    epoch: float
    val_loss: float
    dice: float
    f1: float
    is_best: bool


@dataclass
class TrainResult:
    """The best trained model. `base_metrics` is the starting model's validation (step 0, same pixels),
    `metrics` the returned model's; `improved` says whether it beats the start (None: no validation)."""

    model: CellModel
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    cancelled: bool = False
    base_metrics: dict[str, float] | None = None
    metrics: dict[str, float] | None = None
    improved: bool | None = None
    held_out_cells: int = 0  # annotated cells in the validation data; below MIN_HELD_OUT_CELLS improved is None


TrainEvent = Union[Progress, TrainStep, Validation]
