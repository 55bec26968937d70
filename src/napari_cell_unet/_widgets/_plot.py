"""A live plot of training and validation loss and validation metrics, for the train dock."""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import QSizePolicy

BACKGROUND = "#262930"  # napari's dark theme
FOREGROUND = "#d6d0ce"
REDRAW_INTERVAL_S = 0.25


class LossPlot(FigureCanvasQTAgg):
    """Loss (left axis, log scale) and Dice / F1 (right axis, 0-1) against the training step."""

    def __init__(self, parent=None):
        figure = Figure(figsize=(4, 2.6), dpi=90, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.setParent(parent)
        self.setMinimumHeight(230)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.loss_axes = figure.add_subplot(1, 1, 1)
        self.metric_axes = self.loss_axes.twinx()
        self._last_draw = 0.0
        self._legend = None
        self.clear()

    def clear(self) -> None:
        self.train_loss: tuple[list[int], list[float]] = ([], [])
        self.val_loss: tuple[list[int], list[float]] = ([], [])
        self.dice: tuple[list[int], list[float]] = ([], [])
        self.f1: tuple[list[int], list[float]] = ([], [])
        self._redraw(force=True)

    def add_train_step(self, step: int, loss: float) -> None:
        _append(self.train_loss, step, loss)
        self._redraw()

    def add_validation(self, step: int, val_loss: float, dice: float, f1: float) -> None:
        _append(self.val_loss, step, val_loss)
        _append(self.dice, step, dice)
        _append(self.f1, step, f1)
        self._redraw(force=True)

    def point_count(self) -> int:
        return len(self.train_loss[0]) + len(self.val_loss[0])

    def finish(self) -> None:
        self._redraw(force=True)

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        loss_ax, metric_ax = self.loss_axes, self.metric_axes
        loss_ax.clear()
        metric_ax.clear()
        loss_ax.plot(*self.train_loss, color="#4fa3ff", lw=1, label="train loss")
        loss_ax.plot(*self.val_loss, "o-", color="#ff9f40", ms=3, lw=1.2, label="val loss")
        metric_ax.plot(*self.dice, "s--", color="#7bd88f", ms=3, lw=1, label="val Dice")
        metric_ax.plot(*self.f1, "^--", color="#e0d25c", ms=3, lw=1, label="val F1@0.5")
        metric_ax.set_ylim(0, 1)
        if not self.train_loss[0]:
            loss_ax.set_xlim(0, 100)
            loss_ax.set_ylim(0, 1)
            loss_ax.text(50, 0.5, "training loss and validation scores\nappear here during training",
                         ha="center", va="center", color=FOREGROUND, fontsize=8, alpha=0.7)
        _style(loss_ax, metric_ax)
        if self._legend is None and self.train_loss[0]:
            handles = loss_ax.get_legend_handles_labels()[0] + metric_ax.get_legend_handles_labels()[0]
            self._legend = self.figure.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=7,
                                              frameon=False, labelcolor=FOREGROUND, handlelength=1.5)
        self.draw_idle()


def _append(series: tuple[list[int], list[float]], step: int, value: float) -> None:
    if value is None:
        return
    series[0].append(int(step))
    series[1].append(float(value))


def _style(loss_ax, metric_ax) -> None:
    loss_ax.set_facecolor(BACKGROUND)
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("step", color=FOREGROUND, fontsize=8)
    loss_ax.set_ylabel("loss", color=FOREGROUND, fontsize=8)
    metric_ax.yaxis.tick_right()  # clear() puts a twin axis's ticks and label back on the left
    metric_ax.yaxis.set_label_position("right")
    metric_ax.set_ylabel("Dice / F1", color=FOREGROUND, fontsize=8)
    for ax in (loss_ax, metric_ax):
        ax.tick_params(colors=FOREGROUND, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#5a626c")


class FramePlot(FigureCanvasQTAgg):
    """Cells per frame (left axis) and median cell area per frame (right axis) of a stack's measurements."""

    def __init__(self, parent=None):
        figure = Figure(figsize=(4, 2.2), dpi=90, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.setParent(parent)
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.count_axes = figure.add_subplot(1, 1, 1)
        self.area_axes = self.count_axes.twinx()
        self.frames: list[int] = []
        self.counts: list[int] = []
        self.areas: list[float] = []
        self.area_label = "median area"

    def show_frames(self, frames, counts, median_areas, area_label: str = "median area") -> None:
        self.frames, self.counts = [int(f) for f in frames], [int(c) for c in counts]
        self.areas, self.area_label = [float(a) for a in median_areas], area_label
        count_ax, area_ax = self.count_axes, self.area_axes
        count_ax.clear()
        area_ax.clear()
        count_ax.plot(self.frames, self.counts, "o-", color="#4fa3ff", ms=3, lw=1.2, label="cells")
        area_ax.plot(self.frames, self.areas, "s--", color="#ff9f40", ms=3, lw=1, label=area_label)
        count_ax.set_facecolor(BACKGROUND)
        count_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        count_ax.set_xlabel("frame", color=FOREGROUND, fontsize=8)
        count_ax.set_ylabel("cells", color="#4fa3ff", fontsize=8)
        area_ax.yaxis.tick_right()
        area_ax.yaxis.set_label_position("right")
        area_ax.set_ylabel(area_label, color="#ff9f40", fontsize=8)
        for ax in (count_ax, area_ax):
            ax.tick_params(colors=FOREGROUND, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color("#5a626c")
        self.draw_idle()
