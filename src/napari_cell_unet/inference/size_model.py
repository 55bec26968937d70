"""A learned first guess of the cells' size: cellpose's size model, on this project's network.

The network was trained on cells of one size (the model's `cell_diameter`), so what its encoder sees depends on
how far the image's cells are from that size. The busiest window of the image is shown to the encoder zoomed as if
the cells were each of `PROBE_DIAMETERS`; the deepest two stages' features, averaged over the window, are
concatenated over the zooms and a ridge regression (fitted by `scripts/fit_size_model.py` on the default model's
training images at random zooms) reads the log cell diameter from them. Cost: encoder passes over windows of at
most `WINDOW` px a side, a fraction of one segmentation probe.

The regression lives in the model's metadata (`size_model`, plain JSON numbers) and belongs to the network it was
fitted on: `fitted_to` is a fingerprint of that network's encoder weights, and a model whose encoder differs (one
fine-tuned with its encoder unfrozen) does not use it.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np
import torch

from .normalize import normalize_channels, to_model_channels
from .rescale import model_diameter, rescale_plane

PROBE_DIAMETERS = tuple(round(50.0 * 1.5 ** k, 1) for k in range(-4, 5))  # 9.9 to 253 px, 1.5x apart
WINDOW = 256  # side, in zoomed pixels, of the window each zoom shows the encoder
WINDOWS = 1  # busiest non-overlapping windows averaged at each zoom, for a new fit (a fitted one says its own)
STAGES = (-2, -1)  # encoder stages pooled (stride 16 and 32)
METADATA_KEY = "size_model"
_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def size_features(network: torch.nn.Module, plane: np.ndarray, rgb: bool, in_channels: int,
                  ranges: list[tuple[float, float]], reference: float, windows_of: Any,
                  autocast: torch.dtype | None = None, channels_last: bool = False) -> np.ndarray:
    """(len(PROBE_DIAMETERS) * features,) pooled encoder features of `plane` at each probe zoom.

    `windows_of(side)` -> [(top, left), ...] of the `side`-px squares to look at (the busiest ones; their features
    are averaged); `ranges` are the whole plane's normalisation ranges, as segmentation uses."""
    height, width = plane.shape[:2]
    rows = []
    for diameter in PROBE_DIAMETERS:
        zoom = reference / diameter
        side = int(min(height, width, max(8, round(WINDOW / zoom))))
        pooled = []
        for top, left in windows_of(side):
            crop = rescale_plane(plane[top:top + side, left:left + side], zoom, rgb)
            x = normalize_channels(to_model_channels(crop, in_channels, rgb), ranges)
            pooled.append(_pooled_encoder_features(network, x, autocast, channels_last))
        mean = np.mean(pooled, axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.concatenate(rows)


def _pooled_encoder_features(network: torch.nn.Module, x: np.ndarray, autocast: torch.dtype | None,
                             channels_last: bool) -> np.ndarray:
    multiple = 32  # the deepest stage's stride; a side under 32 px is padded to 64 (that stage keeps 2 x 2 cells)
    pad = [(0, 0)] + [(0, (-s) % multiple + (multiple if s < multiple else 0)) for s in x.shape[1:]]
    padded = np.pad(x, pad, mode="symmetric") if any(p[1] for p in pad) else x
    device = next(network.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None].to(device)
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.float32,
                                                 enabled=autocast is not None):
        features = network.encoder(tensor)
    pooled = [features[s].float().mean(dim=(2, 3))[0] for s in STAGES]
    vector = torch.cat(pooled).cpu().numpy()
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def encoder_fingerprint(network: torch.nn.Module) -> str:
    """A short hash of the encoder's weights and running statistics (which a frozen-encoder fine-tune keeps)."""
    from .inference_network import _weights_version

    version = _weights_version(network.encoder)
    cached = _FINGERPRINTS.get(network)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(network.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    _FINGERPRINTS[network] = (version, digest.hexdigest()[:16])
    return _FINGERPRINTS[network][1]


class SizeRegression:
    """log(diameter) = weights . (features - mean) / scale + bias, from the metadata's `size_model`."""

    def __init__(self, entry: dict[str, Any]):
        self.diameters = tuple(float(d) for d in entry["probe_diameters"])
        self.reference = float(entry["reference"])
        self.mean = np.asarray(entry["mean"], np.float64)
        self.scale = np.asarray(entry["scale"], np.float64)
        self.weights = np.asarray(entry["weights"], np.float64)
        self.bias = float(entry["bias"])
        self.fitted_to = str(entry.get("fitted_to", ""))
        self.windows = int(entry.get("windows", 1))
        if not (self.mean.shape == self.scale.shape == self.weights.shape) or self.mean.ndim != 1 or self.windows < 1:
            raise ValueError("size_model: mean, scale and weights must be vectors of one length, windows >= 1")

    def predict(self, features: np.ndarray) -> float:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return float(np.exp(z @ self.weights + self.bias))

    def to_metadata(self) -> dict[str, Any]:
        return {"probe_diameters": list(self.diameters), "reference": self.reference, "fitted_to": self.fitted_to,
                "windows": self.windows, "mean": _rounded(self.mean), "scale": _rounded(self.scale),
                "weights": _rounded(self.weights), "bias": self.bias}

    @classmethod
    def fit(cls, features: np.ndarray, diameters: np.ndarray, alpha: float, sample_weight: np.ndarray | None = None,
            reference: float = 50.0, fitted_to: str = "", windows: int = 1) -> "SizeRegression":
        """Ridge regression of log(diameters) on standardised features (closed form, dual when wide)."""
        x = np.asarray(features, np.float64)
        y = np.log(np.asarray(diameters, np.float64))
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        w = w / w.sum()
        mean = w @ x
        scale = np.sqrt(w @ (x - mean) ** 2) + 1e-6
        z = (x - mean) / scale
        bias = float(w @ y)
        sw = np.sqrt(w)[:, None]
        a, b = z * sw, (y - bias) * sw[:, 0]
        if a.shape[0] < a.shape[1]:
            coef = a.T @ np.linalg.solve(a @ a.T + alpha * np.eye(a.shape[0]), b)
        else:
            coef = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ b)
        entry = {"probe_diameters": PROBE_DIAMETERS, "reference": reference, "mean": mean, "scale": scale,
                 "weights": coef, "bias": bias, "fitted_to": fitted_to, "windows": windows}
        return cls(entry)


def size_regression(model: Any, network: torch.nn.Module) -> SizeRegression | None:
    """The model's size regression, when it has one fitted to this very encoder; else None."""
    entry = (getattr(model, "metadata", None) or {}).get(METADATA_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        regression = SizeRegression(entry)
    except (KeyError, TypeError, ValueError):
        return None
    if regression.diameters != PROBE_DIAMETERS or regression.reference != model_diameter(model):
        return None
    if regression.fitted_to != encoder_fingerprint(network):
        return None
    return regression


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values).ravel()]
