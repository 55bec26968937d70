"""The training loop: fine-tuning or training from scratch, as a generator of progress events.

    result = yield from iter_train(pairs, model="default", config=TrainConfig(steps=100))
    # yields Progress, TrainStep, Validation; returns the TrainResult (`train(...)` is the blocking form)

Cancelling keeps the best model so far: pass `should_stop` (checked every step) and the
generator returns a TrainResult(cancelled=True); or use a `Trainer` and read
`trainer.result` after closing its generator.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import time
from dataclasses import asdict
from typing import Any, Callable, Generator, Iterator, Sequence

import numpy as np
import torch

from .._progress import Progress, result_of
from ..inference.devices import native_bf16_cpu
from ..inference.taught_diameters import CHECKED_IMAGES, annotated_size, remember, size_check
from ..model import CellModel
from ..model.files import BUNDLED_PROBES, descends_from_bundled
from .augment import AugmentConfig, CropSampler
from .base_model import BaseModelTargets
from .config import FINE_TUNING_LR, ModelSpec, TrainConfig
from .events import TrainEvent, TrainResult, TrainStep, Validation
from .losses import distillation_loss, segmentation_loss
from .pairs import TrainingPair, annotated_cells, require_cells, zoom_to_diameter
from .targets import TrainingDataError, make_targets
from .validation import (held_out_cells, held_out_window, improvement, prepare_validation, score_key,
                         split_validation, validate)

__all__ = ["Trainer", "iter_train", "resolve_model", "train"]


def iter_train(pairs: Sequence[TrainingPair], model: ModelSpec = "default", config: TrainConfig | None = None,
               val_pairs: Sequence[TrainingPair] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Generator[TrainEvent, None, TrainResult]:
    """Train, yielding Progress / TrainStep / Validation events; returns the TrainResult.

    model: "default" (the bundled model), "scratch" (new network of `config.architecture`),
    a CellModel (copied, never modified) or the path of a model file.
    val_pairs: validation data; None = hold out `config.val_fraction` of `pairs` (of the
    image area when there is a single pair).
    Loss is masked by each pair's `region`: pixels outside get no loss (partial annotation).
    """
    return Trainer(pairs, model, config, val_pairs, should_stop).events()


def train(pairs: Sequence[TrainingPair], model: ModelSpec = "default", config: TrainConfig | None = None,
          val_pairs: Sequence[TrainingPair] | None = None,
          progress: Callable[[Progress], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          on_event: Callable[[TrainEvent], None] | None = None) -> TrainResult:
    """Blocking wrapper of `iter_train`; returns the TrainResult (the best model)."""
    def deliver(event: TrainEvent) -> None:
        if on_event is not None:
            on_event(event)
        if progress is not None and isinstance(event, Progress):
            progress(event)

    return result_of(iter_train(pairs, model, config, val_pairs, should_stop), on_event=deliver)


def resolve_model(model: ModelSpec, architecture: dict[str, Any] | None = None) -> CellModel:
    """A fresh CellModel to train, from "default", "scratch", a CellModel or a model file path."""
    from ..model import load_model

    if isinstance(model, CellModel):
        return model.copy()
    if isinstance(model, str) and model == "default":
        return load_model(None)
    if isinstance(model, str) and model == "scratch":
        return CellModel.create(architecture=architecture, name="scratch")
    return load_model(model)


class Trainer:
    """One training run. `events()` is the generator; `stop()` asks it to finish after the
    current step; `result` holds the TrainResult (best model so far) once the generator ended,
    also when the consumer closed it early."""

    def __init__(self, pairs: Sequence[TrainingPair], model: ModelSpec = "default",
                 config: TrainConfig | None = None, val_pairs: Sequence[TrainingPair] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        if not pairs:
            raise TrainingDataError("no training pairs given")
        require_cells(pairs)
        self.config = config or TrainConfig()
        self.pairs, self.val_pairs = list(pairs), (list(val_pairs) if val_pairs is not None else None)
        self.model_spec = model
        self._should_stop = should_stop
        self._stop_requested = False
        self.result: TrainResult | None = None
        self._run: _Run | None = None

    def stop(self) -> None:
        self._stop_requested = True

    @property
    def model(self) -> CellModel | None:
        """The model being trained (its weights change every step); None before training starts."""
        return self._run.model if self._run is not None else None

    def stopping(self) -> bool:
        return self._stop_requested or (self._should_stop is not None and bool(self._should_stop()))

    def events(self) -> Generator[TrainEvent, None, TrainResult]:
        run = self._run = _Run(self)
        try:
            yield from run.execute()
        finally:
            self.result = run.finish() if run.model is not None else None
            run.release()
        return self.result


class _Run:
    """State of one training run (kept off the public Trainer)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.config = cfg = trainer.config
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_score: tuple[float, float] = (-math.inf, -math.inf)
        self.best_step = 0
        self.best_metrics: dict[str, float] = {}
        self.base_metrics: dict[str, float] | None = None
        self.step = 0
        self.stopped_early = False
        self.cancelled = False
        self.started = time.perf_counter()
        self.threads_before = torch.get_num_threads()
        self.model: CellModel | None = None
        self.optimizer = None
        self.anchors: list = []  # (trained weight, its starting value) with TrainConfig.anchor
        self.train_data: list = []  # prepared training and validation items, once the data is loaded
        self.val_data: list = []
        self.start_state: dict[str, torch.Tensor] | None = None  # the starting weights, with TrainConfig.blend < 1
        self.kept_change = 1.0  # the fraction of the weights' change the kept model has (TrainConfig.blend)
        self.from_bundled = False  # fine-tuned from the bundled model: it keeps measuring the cell size
        self.size_checks: list[tuple[float, float | None]] = []  # (annotated, estimated) diameter per checked image
        self.device = _resolve_device(cfg.device)
        self.batch_size = cfg.batch_size or (8 if self.device.type == "cuda" else 4)
        self.total_steps = 0
        self.steps_per_epoch = 1
        self.finished = False

    # ------------------------------------------------------------------ setup
    def execute(self) -> Iterator[TrainEvent]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        yield Progress(0, 0, "loading the model")
        self.model = resolve_model(self.trainer.model_spec, cfg.architecture)
        self.from_bundled = not self._scratch and descends_from_bundled(self.model)
        network = self.model.network.to(self.device)
        self.channels_last = self.device.type == "cuda" or (cfg.amp and _amp_dtype(self.device) is not None)
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        yield Progress(0, 0, "preparing the training data")
        self.base = BaseModelTargets(self.model, self.device, 0.0 if self._scratch else cfg.distill)
        pairs, val_pairs = self.trainer.pairs, self.trainer.val_pairs
        if cfg.match_model_diameter and not self._scratch:
            from ..inference import model_diameter

            reference = model_diameter(self.model)
            pairs = [zoom_to_diameter(p, reference) for p in pairs]
            val_pairs = None if val_pairs is None else [zoom_to_diameter(p, reference) for p in val_pairs]
        train_pairs, val_pairs = split_validation(pairs, val_pairs, cfg.val_fraction, cfg.seed,
                                                  base_cells=None if self._scratch else self.base.cells)
        self.train_data, self.val_data = self._prepare_all(train_pairs, val_pairs)
        self.base.forget()
        self.train_names = [p.name for p in train_pairs]
        self.val_names = [p.name for p in val_pairs]
        generator = torch.Generator().manual_seed(cfg.seed)
        augment = AugmentConfig(scale=tuple(cfg.scale_range)) if cfg.augment else None
        sampler = CropSampler([d["image"] for d in self.train_data], [d["target"] for d in self.train_data],
                              self._crop_size(), generator, augment, [d["weight"] for d in self.train_data])
        annotated = float(sum(d["target"][2].sum() for d in self.train_data))
        self.steps_per_epoch = max(1, math.ceil(annotated / (self._crop_size() ** 2 * self.batch_size)))
        self.total_steps = self._total_steps()
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(int(cfg.threads))  # restored in release()
        every = cfg.validate_every or max(1, self.total_steps // max(1, cfg.validations))
        if not self._scratch:
            yield from self._check_size_estimate()
        yield from self._train(sampler, every)

    def _check_size_estimate(self) -> Iterator[TrainEvent]:
        """The automatic cell size on the first training images with enough annotated cells, against their median
        annotated size (`taught_diameters.size_check`, recorded with the model at the end). Done before training:
        the measuring model is the start (or the bundled one), not what training makes of it."""
        from ..inference.segment import iter_measured_diameter

        sized = [(pair.image, annotated_size(annotated_cells(pair))) for pair in self.trainer.pairs]
        sized = [(image, size[0]) for image, size in sized if size is not None][:CHECKED_IMAGES]
        for number, (image, annotated) in enumerate(sized):
            yield Progress(number, len(sized), "checking the automatic cell size on your images")
            estimated = result_of(iter_measured_diameter(self.model, image, device=str(self.device),
                                                         threads=self.config.threads))
            self.size_checks.append((annotated, estimated))

    @property
    def _scratch(self) -> bool:
        return isinstance(self.trainer.model_spec, str) and self.trainer.model_spec == "scratch"

    def _crop_size(self) -> int:
        crop = self.config.crop_size or (256 if self.device.type == "cuda" else 128)
        return _round_down(int(crop), 32)

    def _total_steps(self) -> int:
        cfg = self.config
        if cfg.steps is not None:
            return max(1, int(cfg.steps))
        if cfg.epochs is not None:
            return max(1, int(round(cfg.epochs * self.steps_per_epoch)))
        if cfg.minutes is not None:
            return 10**9  # bounded by the clock; the schedule follows elapsed time
        return 100

    def _prepare_all(self, train_pairs: list[TrainingPair],
                     val_pairs: list[TrainingPair]) -> tuple[list[dict], list[dict]]:
        """Normalise images and build targets once (threads: numpy and scikit-image release the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        for pair in train_pairs:  # the base model's predictions first, while the network is the base
            if self.base.distill_mask(pair) is not None:
                self.base.prediction(pair)
        validation_item = functools.partial(prepare_validation, model=self.model,
                                            border_thickness=self.config.border_thickness)
        jobs = [(self._prepare, p) for p in train_pairs] + [(validation_item, p) for p in val_pairs]
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            prepared = list(pool.map(lambda job: job[0](job[1]), jobs))
        return prepared[:len(train_pairs)], prepared[len(train_pairs):]

    def _prepare(self, pair: TrainingPair) -> dict[str, Any]:
        """Target channels: cell, border, region, then distillation weight, base cell, base border (0..255)."""
        image = _normalized(pair.image, self.model)
        instances, cell, border = make_targets(pair.labels, pair.borders, self.config.border_thickness)
        region = pair.region if pair.region is not None else np.ones(cell.shape, bool)
        distill = self.base.distill_mask(pair)
        if distill is not None and self.config.protect_unpainted:
            unpainted = self.base.unpainted_cells(pair, instances)
            region, distill = region & ~unpainted, distill | (unpainted & ~held_out_window(pair))
        channels = [cell, border, region]
        if distill is not None:
            soft = np.rint(self.base.prediction(pair) * 255).astype(np.uint8)
            channels += [distill.astype(np.uint8) * 255, soft[0], soft[1]]
        else:
            channels += [np.zeros(cell.shape, np.uint8)] * 3
        target = np.stack(channels).astype(np.uint8)
        # small images: pad to a crop; the padding lies outside the region, so it gets no loss
        image, target = _pad_to(image, target, self._crop_size())
        return {"image": torch.from_numpy(image).to(self.device), "target": torch.from_numpy(target).to(self.device),
                "shape": cell.shape, "name": pair.name, "weight": pair.weight}

    # ------------------------------------------------------------------ loop
    def _train(self, sampler: CropSampler, every: int) -> Iterator[TrainEvent]:
        cfg = self.config
        network = self.model.network
        self.freeze_encoder = cfg.freeze_encoder
        if self.freeze_encoder is None:
            self.freeze_encoder = self.device.type == "cpu" and self.trainer.model_spec != "scratch"
        trainable = _trainable_parameters(network, self.freeze_encoder)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
        self.lr = cfg.lr or (1e-3 if self.trainer.model_spec == "scratch" else FINE_TUNING_LR)
        self.optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=cfg.weight_decay)
        self.anchors = ([(p, p.detach().clone()) for p in trainable]
                        if cfg.anchor > 0 and not self._scratch else [])
        self.start_state = _state_copy(network) if cfg.blend < 1 and not self._scratch else None
        amp_dtype = _amp_dtype(self.device) if cfg.amp else None
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        budget = cfg.minutes * 60.0 if cfg.minutes is not None else None
        loop_start = time.perf_counter()
        validations_without_gain = 0
        # with a time budget (and no step interval) validations are spread over the clock
        by_clock = budget is not None and cfg.validate_every is None
        clock_interval = budget / max(1, cfg.validations) if by_clock else 0.0
        next_validation = clock_interval
        self.freeze_batchnorm = cfg.freeze_batchnorm
        if self.freeze_batchnorm is None:
            self.freeze_batchnorm = self.trainer.model_spec != "scratch"
        if cfg.validations > 0 or cfg.validate_every:
            yield from self._validate_base()
        _train_mode(network, self.freeze_encoder, self.freeze_batchnorm)
        while self.step < self.total_steps:
            if self.trainer.stopping():
                self.cancelled = True
                break
            fraction = self.step / self.total_steps
            if budget is not None:
                fraction = max(fraction if cfg.steps or cfg.epochs else 0.0, (time.perf_counter() - loop_start) / budget)
                if fraction >= 1.0:
                    break
            lr = self.lr * _schedule(fraction, cfg.warmup_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images, targets = sampler.sample(self.batch_size)
            loss = self._optimize(network, images, targets, amp_dtype, scaler)
            self.step += 1
            epoch = self.step / self.steps_per_epoch
            total = self.total_steps if budget is None else max(self.step, int(self.step / max(fraction, 1e-6)))
            event = TrainStep(self.step, total, round(epoch, 3), loss, lr)
            self.history.append({"event": "step", **asdict(event)})
            yield event
            yield Progress(self.step, total, f"step {self.step}/{total}  loss {loss:.4f}")
            elapsed = time.perf_counter() - loop_start
            last = self.step >= self.total_steps or (budget is not None and elapsed >= budget)
            due = elapsed >= next_validation if by_clock else self.step % every == 0
            if (due or last) and (cfg.validations > 0 or cfg.validate_every):
                next_validation = elapsed + clock_interval
                validation = yield from self._validate(epoch)
                if validation is not None:
                    validations_without_gain = 0 if validation.is_best else validations_without_gain + 1
                    if cfg.early_stopping_patience is not None and validations_without_gain >= cfg.early_stopping_patience:
                        self.stopped_early = True
                        break
                _train_mode(network, self.freeze_encoder, self.freeze_batchnorm)
        self.finished = True

    def _optimize(self, network, images, targets, amp_dtype, scaler) -> float:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = network(images)
        logits = logits.float()
        loss = segmentation_loss(logits, targets[:, :2], targets[:, 2:3], self.config.border_weight)
        if self.config.distill > 0 and bool(targets[:, 3].any()):
            loss = loss + self.config.distill * distillation_loss(logits, targets[:, 4:6] / 255.0, targets[:, 3:4] / 255.0)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(self.optimizer)
            scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            for parameter, start in self.anchors:
                parameter.lerp_(start, self.config.anchor)
        return float(loss.detach())

    # ------------------------------------------------------------------ validation
    def _validate_base(self) -> Iterator[TrainEvent]:
        """Step 0: the starting model on the validation pixels, the bar every trained step must beat."""
        if not self.val_data:
            return
        yield Progress(0, self.total_steps, "validating the starting model")
        self.base_metrics = metrics = validate(self.model, self.val_data, self.config.border_weight, self.device)
        event = Validation(0, 0.0, metrics["val_loss"], metrics["dice"], metrics["f1"], False)
        self.history.append({"event": "validation", **asdict(event)})
        yield event

    def _validate(self, epoch: float) -> Iterator[Progress]:
        if not self.val_data:
            return None
        yield Progress(self.step, self.total_steps, "validating")
        metrics = validate(self.model, self.val_data, self.config.border_weight, self.device)
        score = score_key(metrics)
        is_best = self.best_state is None or score > self.best_score
        if is_best:
            self.best_score, self.best_step, self.best_metrics = score, self.step, metrics
            self.best_state = _state_copy(self.model.network)
        event = Validation(self.step, round(epoch, 3), metrics["val_loss"], metrics["dice"], metrics["f1"], is_best)
        self.history.append({"event": "validation", **asdict(event)})
        yield event
        return event

    # ------------------------------------------------------------------ end
    def finish(self) -> TrainResult:
        if not self.finished and not self.cancelled:
            self.cancelled = True  # the consumer closed the generator
        network = self.model.network
        if self.best_state is not None:
            network.load_state_dict(self.best_state)
        else:
            self.best_step = self.step
        self.kept_change = self._blend(network)
        network.to("cpu", memory_format=torch.contiguous_format).eval()
        network.requires_grad_(True)  # undo freeze_encoder
        self._record()
        n_cells = held_out_cells(self.val_data)
        improved = improvement(self.base_metrics, self.best_metrics if self.best_state is not None else None, n_cells)
        self.model.metadata["training"].update(improved=improved, held_out_cells=n_cells)
        return TrainResult(self.model, self.history, self.best_step, self.stopped_early, self.cancelled,
                           self.base_metrics, dict(self.best_metrics) or None, improved, n_cells)

    def _blend(self, network: torch.nn.Module) -> float:
        """Move the trained weights back to the start by 1 - `TrainConfig.blend` of their change, unless the
        held-back cells score that blend lower than the whole change; the fraction of the change kept."""
        if self.start_state is None or self.step == 0:
            return 1.0
        trained = _state_copy(network)
        fraction = self.config.blend
        network.load_state_dict(blended_state(self.start_state, trained, fraction))
        if not self.val_data or not self.best_metrics:
            return fraction
        metrics = validate(self.model, self.val_data, self.config.border_weight, self.device)
        if metrics["f1"] < self.best_metrics["f1"]:
            network.load_state_dict(trained)
            return 1.0
        self.best_metrics = metrics
        return fraction

    def _record(self) -> None:
        cfg = self.config
        seconds = time.perf_counter() - self.started
        meta = self.model.metadata
        previous = meta.get("training") or {}
        record = {
            "data": {"train": self.train_names if hasattr(self, "train_names") else [],
                     "validation": self.val_names if hasattr(self, "val_names") else []},
            "init": _describe_init(self.trainer.model_spec),
            "steps": self.step, "best_step": self.best_step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "batch_size": self.batch_size, "crop_size": self._crop_size(),
            "freeze_encoder": bool(getattr(self, "freeze_encoder", False)),
            "freeze_batchnorm": bool(getattr(self, "freeze_batchnorm", False)),
            "metrics": self.best_metrics, "base_metrics": self.base_metrics, "seconds": round(seconds, 1),
            "machine": machine_description(self.device),
            "config": {k: v for k, v in asdict(cfg).items()},
            "cancelled": self.cancelled, "stopped_early": self.stopped_early,
            "kept_change": self.kept_change,
        }
        if previous:
            record["previous"] = previous
        meta["training"] = record
        if self.trainer.model_spec == "scratch":
            meta["cell_diameter"] = _training_cell_diameter(self.trainer.pairs)
        if self.from_bundled:
            meta["diameter_model"] = BUNDLED_PROBES  # see inference.segment._probe_model
        if self.trainer.model_spec != "scratch":
            remember(meta, [(pair.image, annotated_cells(pair)) for pair in self.trainer.pairs])
            size_check(meta, self.size_checks)
        meta["name"] = cfg.name or (f"{self.model.name} (fine-tuned)" if self.trainer.model_spec != "scratch" else "trained from scratch")

    def release(self) -> None:
        torch.set_num_threads(self.threads_before)
        self.optimizer = None
        self.anchors = []
        self.train_data = self.val_data = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------- helpers
def _training_cell_diameter(pairs: Sequence[TrainingPair]) -> float | None:
    """Median cell diameter of the training labels: the reference size for inference's `diameter=` rescaling.

    Fine-tuned models keep their base model's value, so one model has one reference size.
    """
    from ..inference import estimate_diameter

    from .targets import as_instance_labels

    diameters = []
    for pair in pairs:
        try:
            diameters.append(estimate_diameter(as_instance_labels(pair.labels)))
        except ValueError:  # no object in this pair
            continue
    return round(float(np.median(diameters)), 2) if diameters else None


def _normalized(image: np.ndarray, model: CellModel) -> np.ndarray:
    """(C, H, W) float32 image, normalised exactly as inference does (per-channel percentiles)."""
    from ..inference.normalize import channel_ranges, is_rgb, normalize_channels, to_model_channels

    try:
        channels = to_model_channels(np.asarray(image), model.in_channels, is_rgb(np.shape(image)))
        return normalize_channels(channels, channel_ranges(channels, model.normalization))
    except ValueError as exc:  # inference's ImageError: constant image, wrong channel count
        raise TrainingDataError(str(exc)) from None


def _pad_to(image: np.ndarray, target: np.ndarray, minimum: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pad (bottom/right) to at least `minimum` and a multiple of `multiple`; padding is outside the region."""
    height, width = image.shape[1:]
    new_h = max(minimum, -(-height // multiple) * multiple)
    new_w = max(minimum, -(-width // multiple) * multiple)
    if (new_h, new_w) == (height, width):
        return image, target
    pad = ((0, 0), (0, new_h - height), (0, new_w - width))
    return np.pad(image, pad, mode="reflect" if min(height, width) > 1 else "edge"), np.pad(target, pad)


def _schedule(fraction: float, warmup: float) -> float:
    """Linear warm-up, then cosine annealing to 2 % of the peak learning rate."""
    if warmup > 0 and fraction < warmup:
        return max(fraction / warmup, 0.01)
    progress = (fraction - warmup) / max(1e-9, 1.0 - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cpu":  # emulated bf16 (CPUs without AVX512-BF16/AMX) is ~300x slower than fp32
        return torch.bfloat16 if native_bf16_cpu() else None
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _trainable_parameters(network: torch.nn.Module, freeze_encoder: bool) -> list[torch.nn.Parameter]:
    encoder = getattr(network, "encoder", None) if freeze_encoder else None
    frozen = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    for parameter in network.parameters():
        parameter.requires_grad_(id(parameter) not in frozen)
    return [p for p in network.parameters() if p.requires_grad]


def _train_mode(network: torch.nn.Module, freeze_encoder: bool, freeze_batchnorm: bool = False) -> None:
    """Train mode; a frozen encoder, or `freeze_batchnorm`, keeps batch-norm statistics fixed.

    Fine-tuning on a few crops of one image would otherwise replace the running statistics learned
    on the whole training set by those of the last ~10 batches, and the model changes everywhere.
    """
    network.train()
    encoder = getattr(network, "encoder", None)
    if freeze_encoder and encoder is not None:
        encoder.eval()
    if freeze_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _describe_init(spec: ModelSpec) -> str:
    if isinstance(spec, CellModel):
        return spec.name
    return str(spec)


def blended_state(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], fraction: float
                  ) -> dict[str, torch.Tensor]:
    """The state dict start + fraction * (trained - start); integer entries (batch counts) as trained."""
    return {key: start[key] + fraction * (value - start[key]) if value.is_floating_point() else value
            for key, value in trained.items()}


def _state_copy(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def _resolve_device(device: str) -> torch.device:
    from ..inference import resolve_device

    return torch.device(resolve_device(device))


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        accelerator = torch.cuda.get_device_name(device)
    else:
        accelerator = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return f"{accelerator}; {platform.system()} {platform.machine()}; Python {platform.python_version()}; torch {torch.__version__}"
