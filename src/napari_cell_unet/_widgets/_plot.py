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


class _TwinAxesCanvas(FigureCanvasQTAgg):
    """A dark-themed figure with one plot and a twin y axis on the right (`left`, `right`)."""

    def __init__(self, parent, height_inches: float, minimum_height: int):
        figure = Figure(figsize=(4, height_inches), dpi=90, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.setParent(parent)
        self.setMinimumHeight(minimum_height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.left = figure.add_subplot(1, 1, 1)
        self.right = self.left.twinx()


class LossPlot(_TwinAxesCanvas):
    """Loss (left axis, log scale) and Dice / F1 (right axis, 0-1) against the training step."""

    def __init__(self, parent=None):
        super().__init__(parent, 2.6, 230)
        self.loss_axes, self.metric_axes = self.left, self.right
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
        _style(loss_ax, metric_ax, "step", ("loss", FOREGROUND), ("Dice / F1", FOREGROUND))
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


def _style(left_ax, right_ax, x_label: str, left_label: tuple[str, str], right_label: tuple[str, str]) -> None:
    """Theme a plot and its twin axis; `*_label` = (text, colour)."""
    left_ax.set_facecolor(BACKGROUND)
    left_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left_ax.set_xlabel(x_label, color=FOREGROUND, fontsize=8)
    left_ax.set_ylabel(left_label[0], color=left_label[1], fontsize=8)
    right_ax.yaxis.tick_right()  # clear() puts a twin axis's ticks and label back on the left
    right_ax.yaxis.set_label_position("right")
    right_ax.set_ylabel(right_label[0], color=right_label[1], fontsize=8)
    for ax in (left_ax, right_ax):
        ax.tick_params(colors=FOREGROUND, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#5a626c")


class FramePlot(_TwinAxesCanvas):
    """Cells per frame (left axis) and median cell area per frame (right axis) of a stack's measurements."""

    def __init__(self, parent=None):
        super().__init__(parent, 2.2, 180)
        self.count_axes, self.area_axes = self.left, self.right
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
        _style(count_ax, area_ax, "frame", ("cells", "#4fa3ff"), (area_label, "#ff9f40"))
        self.draw_idle()
