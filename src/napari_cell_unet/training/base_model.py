"""What the starting model contributes when fine-tuning on a partially annotated pair.

Outside the painted region its predictions are soft targets (distillation), so what was not painted stays as the
base model had it; its cells that overlap no painted cell are left out of the region instead of being taught as
background. Predictions are made once, on the whole image, through the inference path, while the network is
still the base model.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model import CellModel
from .pairs import TrainingPair
from .validation import held_out_window


class BaseModelTargets:
    """The base model's predictions on training pairs, cached by image until `forget()`."""

    def __init__(self, model: CellModel, device: torch.device, distill: float):
        self.model, self.device, self.distill = model, device, distill
        self._probabilities: dict[int, np.ndarray] = {}

    def distill_mask(self, pair: TrainingPair) -> np.ndarray | None:
        """Where the base model's predictions are the targets: outside the annotated region of a partially
        annotated pair, but not in a window held out for validation."""
        if self.distill <= 0 or pair.region is None:
            return None
        mask = ~pair.region & ~held_out_window(pair)
        return mask if mask.any() else None  # nothing: fully annotated apart from a held-out strip

    def prediction(self, pair: TrainingPair) -> np.ndarray:
        """(2, H, W) probabilities of the starting model on the pair's whole image (inference path, cached)."""
        from ..inference.predict import predict_probabilities

        key = id(pair.image)
        if key not in self._probabilities:
            self._probabilities[key] = predict_probabilities(pair.image, self.model, device=self.device)
        return self._probabilities[key]

    def unpainted_cells(self, pair: TrainingPair, painted: np.ndarray) -> np.ndarray:
        """Pixels of the base model's cells that overlap no painted cell (less than a tenth of their area)."""
        from ..inference.instances import instances_from_probabilities, own_scale_params

        probabilities = self.prediction(pair)
        found = instances_from_probabilities(probabilities[0], probabilities[1], **own_scale_params(self.model))
        area = np.bincount(found.ravel())
        overlap = np.bincount(found[painted > 0].ravel(), minlength=area.size)
        other = 10 * overlap < area
        other[0] = False
        return other[found]

    def cells(self, pair: TrainingPair) -> np.ndarray:
        return self.prediction(pair)[0] > self.model.postprocessing["cell_threshold"]

    def forget(self) -> None:
        self._probabilities.clear()
