"""A network together with everything needed to use it correctly (normalisation, thresholds, provenance)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .architecture import DEFAULT_ARCHITECTURE, OUTPUT_CLASSES, build_network

DEFAULT_NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8}
DEFAULT_POSTPROCESSING = {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 30, "merge_threshold": 0.0,
                          "min_size_fraction": 0.0, "split_border_threshold": 0.0, "split_seed_fraction": 0.0}


@dataclass
class CellModel:
    """A U-Net plus its metadata.

    metadata keys (all JSON-able):
      architecture   dict passed to `build_network`
      in_channels    int
      classes        list of output class names (["cell", "border"])
      normalization  {"method": "percentile", "low": float, "high": float}
      postprocessing {"cell_threshold", "border_threshold", "min_size", "merge_threshold", "min_size_fraction",
                     "split_border_threshold", "split_seed_fraction"}: tuned defaults (the fractions: of a cell's
                     area at the diameter segmented at; 0 turns a rule off)
      training       free-form record: data, epochs/steps, metrics, time, machine
      versions       library versions at save time
      name           human-readable name shown in the GUI
    """

    network: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, architecture: dict[str, Any] | None = None, in_channels: int = 1,
               name: str = "untrained", **metadata: Any) -> "CellModel":
        arch = copy.deepcopy(DEFAULT_ARCHITECTURE if architecture is None else architecture)
        meta = {
            "name": name,
            "architecture": arch,
            "in_channels": int(in_channels),
            "classes": list(OUTPUT_CLASSES),
            "normalization": dict(DEFAULT_NORMALIZATION),
            "postprocessing": dict(DEFAULT_POSTPROCESSING),
            "training": {},
        }
        meta.update(metadata)
        return cls(build_network(arch, in_channels=in_channels, n_classes=len(meta["classes"])), meta)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "model"))

    @property
    def in_channels(self) -> int:
        return int(self.metadata.get("in_channels", 1))

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", OUTPUT_CLASSES))

    @property
    def normalization(self) -> dict[str, Any]:
        return {**DEFAULT_NORMALIZATION, **self.metadata.get("normalization", {})}

    @property
    def postprocessing(self) -> dict[str, Any]:
        """cell_threshold, border_threshold, min_size, merge_threshold, min_size_fraction, split_border_threshold,
        split_seed_fraction: the model's tuned values, `DEFAULT_POSTPROCESSING` where
        the metadata has none. The one place these defaults are completed."""
        stored = self.metadata.get("postprocessing", {})
        return {key: stored.get(key, default) for key, default in DEFAULT_POSTPROCESSING.items()}

    @property
    def device(self):
        return next(self.network.parameters()).device

    def copy(self) -> "CellModel":
        """An independent deep copy (fine-tuning never changes the model it started from)."""
        return CellModel(copy.deepcopy(self.network), copy.deepcopy(self.metadata))
