"""The :class:`~course_utils.widgets.ActivationExplorer`'s six panels, UI-free.

:class:`ExplorerFigure` builds the axes once, lays them out for the width the page reports,
and updates every artist in place from a :class:`~course_utils.widgets._session.Session`:

1. activation histogram per layer (or, in the 'over time' view, a layer-by-step heat map);
2. mean and std of each layer's pre-activation;
3. saturated (tanh, sigmoid) or dead (ReLU) units per layer;
4. std of the gradient with respect to each layer's output;
5. update-to-data ratio per weight matrix, with Karpathy's 1e-3 line;
6. training loss and test accuracy.

Axis limits move in round steps and only when the data leaves them (see ``_axes``), and
the titles are fixed or change rarely, so most frames are blitted over a saved background.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from matplotlib.transforms import Affine2D, blended_transform_factory, offset_copy

from ._axes import EMA, decades, finite_range, log_axis, nice_ceiling, sqrt_clipped, sticky_ylim
from ._display import (
    GREY,
    OKABE_ITO,
    FigureView,
    grid_positions,
    layer_colors,
    pin_labels,
    style,
    style_axes,
)
from ._session import Session

__all__ = ["ExplorerFigure", "HEAT_COLUMNS", "RATIO_TARGET"]

HEAT_COLUMNS = 160  # the heat map shows at most this many time columns (older ones merged)
RATIO_TARGET = 1e-3
_PANELS = ("hist", "pre", "tail", "grad", "ratio", "loss")


class ExplorerFigure:
    """The explorer's figure: build once, :meth:`build_layers` when the depth or the
    activation changes, :meth:`show` at every update.

    Attributes:
        view: the :class:`~course_utils.widgets._display.FigureView` (``view.widget`` is
            the canvas to put in a layout).
        ax: the axes by panel name: ``hist``, ``heat`` (with ``cbar``), ``pre``, ``tail``,
            ``grad``, ``ratio``, ``loss`` (with ``acc``, its twin).
    """

    def __init__(self):
        self.view = FigureView(self._layout)
        fig = self.view.figure
        with style():
            self.ax = {name: fig.add_axes((0, 0, 1, 1)) for name in _PANELS}
            for a in self.ax.values():
                style_axes(a)
            self.ax["heat"] = fig.add_axes((0, 0, 1, 1))
            self.ax["cbar"] = fig.add_axes((0, 0, 1, 1))
            self.ax["acc"] = self.ax["loss"].twinx()
            # the per-layer panels place layer i at x = (i - 0.4) / (depth + 0.2) of their
            # width, so a new depth changes a transform, not their limits or ticks, and
            # their backgrounds need no new render (layer numbers are drawn as animated text)
            self._layer_x = Affine2D()
            self._layer_trans = {
                name: blended_transform_factory(
                    self._layer_x + self.ax[name].transAxes, self.ax[name].transData
                )
                for name in ("pre", "tail", "grad")
            }
            self._build_static()
        self.view.fit()
        self.layer_artists: list = []
        self.tail_key = "saturated"

    # -- layout ------------------------------------------------------------------------------

    def _layout(self, width: int) -> int:
        """3 x 2 panels; margins in CSS pixels so 10-pt labels keep their room."""
        row = int(np.clip(0.19 * width, 130, 190))
        top, bottom, hgap = 28, 48, 76
        height = top + bottom + hgap + 2 * row
        cells = grid_positions(
            width, height, 2, 3, left=64, right=58, top=top, bottom=bottom, wgap=84, hgap=hgap
        )
        for name, pos in zip(_PANELS, [*cells[0], *cells[1]]):
            self.ax[name].set_position(pos)
        self.ax["acc"].set_position(cells[1][2])
        x, y, w, h = cells[0][0]
        bar = 44 / width  # the colour bar and its tick labels stay inside the panel's cell
        self.ax["heat"].set_position((x, y, w - bar - 12 / width, h))
        self.ax["cbar"].set_position((x + w - bar, y, 8 / width, h))
        return height

    def _build_static(self) -> None:
        ax = self.ax
        self._heat = ax["heat"].imshow(
            np.zeros((2, 2)),
            aspect="auto",
            origin="lower",
            cmap="cividis",
            interpolation="nearest",
            vmin=-1,
            vmax=2,
        )
        cb = ax["heat"].figure.colorbar(self._heat, cax=ax["cbar"], ticks=[-1, 0, 1, 2])
        cb.ax.set_yticklabels(["0.1", "1", "10", "100"])
        ax["cbar"].tick_params(labelsize=10)
        ax["heat"].set_xlabel("training step")

        ax["hist"].set_xlabel("activation value")
        ax["hist"].set_ylabel("% per bin (sqrt)")
        ax["hist"].set_yscale("function", functions=(sqrt_clipped, np.square))
        ax["hist"].set_ylim(0, 130)  # room at the top for the legend
        ax["hist"].yaxis.set_major_locator(FixedLocator([0, 2, 10, 25, 50, 100]))
        ax["hist"].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax["hist"].xaxis.set_major_locator(MaxNLocator(4))
        # first and last layer's colours: the same at any depth (see layer_colors)
        first, last = layer_colors(2)
        ax["hist"].legend(
            handles=[Line2D([], [], color=first, lw=1.4), Line2D([], [], color=last, lw=1.4)],
            labels=["layer 1", "last"], loc="upper center", frameon=False, ncols=2,
            handlelength=1.2, handletextpad=0.4, columnspacing=1.0, borderaxespad=0.1,
        )  # fmt: skip
        for name in ("pre", "tail", "grad"):
            ax[name].set_xlim(0, 1)
            ax[name].set_xticks([])

        ax["pre"].set_xlabel("layer")
        ax["pre"].set_ylabel("mean, std")
        ax["pre"].axhline(1.0, color=GREY, lw=0.8, ls=":")
        ax["pre"].axhline(0.0, color=GREY, lw=0.8)
        (self._pre_std,) = ax["pre"].plot(
            [], [], "o-", color=OKABE_ITO["blue"], label="std", transform=self._layer_trans["pre"]
        )
        (self._pre_mean,) = ax["pre"].plot(
            [], [], "s--", color=OKABE_ITO["orange"], label="mean",
            transform=self._layer_trans["pre"],
        )  # fmt: skip
        ax["pre"].legend(loc="upper right", frameon=False, ncols=2, handlelength=1.5)

        ax["tail"].set_xlabel("layer")
        ax["tail"].set_ylim(0, 100)

        ax["grad"].set_xlabel("layer")
        ax["grad"].set_ylabel("std of dloss/dout")
        (self._grad_line,) = ax["grad"].plot(
            [], [], "o-", color=OKABE_ITO["vermillion"], transform=self._layer_trans["grad"]
        )
        # the tail panel's label says 'saturated' or 'dead': drawn as a cached text, so a new
        # activation does not render the panel again
        self._tail_label = ax["tail"].text(
            0, 0.5, "", rotation=90, ha="right", va="center",
            transform=offset_copy(ax["tail"].transAxes, ax["tail"].figure, x=-27, units="points"),
        )  # fmt: skip

        ax["ratio"].set_xlabel("training step")
        ax["ratio"].set_ylabel("std(dW) / std(W)")
        ax["ratio"].axhline(RATIO_TARGET, color="black", lw=1.0, ls="--")
        ax["ratio"].text(
            0.98,
            0.03,
            "black: output layer",
            transform=ax["ratio"].transAxes,
            ha="right",
            va="bottom",
            fontsize=10,
            color=GREY,
        )
        for name in ("grad", "ratio"):
            log_axis(ax[name])

        ax["loss"].set_xlabel("training step")
        ax["loss"].set_ylabel("loss", color=OKABE_ITO["blue"])
        (self._loss_raw,) = ax["loss"].plot([], [], color=OKABE_ITO["sky"], lw=0.6, alpha=0.7)
        (self._loss_ema,) = ax["loss"].plot([], [], color=OKABE_ITO["blue"], lw=1.6)
        acc = ax["acc"]
        acc.tick_params(labelsize=10)
        acc.spines["top"].set_visible(False)
        acc.set_ylim(0, 100)
        acc.yaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
        acc.set_ylabel("test accuracy %", color=OKABE_ITO["vermillion"])
        (self._acc_line,) = acc.plot([], [], ".-", color=OKABE_ITO["vermillion"], lw=1.2, ms=4)
        self._diverged_text = ax["loss"].text(
            0.5,
            0.5,
            "",
            transform=ax["loss"].transAxes,
            ha="center",
            va="center",
            color=OKABE_ITO["vermillion"],
            fontsize=10,
            fontweight="bold",
        )
        for name in ("hist", "pre", "tail", "loss"):
            pin_labels(ax[name], left=27)
        for name in ("grad", "ratio"):
            pin_labels(ax[name], left=33)
        pin_labels(ax["heat"], left=14)
        pin_labels(ax["acc"], right=27)
        # titles at a fixed height: finding it automatically costs a layout per draw
        self.titles = {
            name: ax[name].set_title(" ", fontsize=10.5, y=1.02)
            for name in ("hist", "heat", "pre", "tail", "grad", "ratio", "loss")
        }
        self.titles["hist"].set_text("Layer outputs (latest)")
        self.titles["heat"].set_text("Layer outputs over time")
        self.titles["grad"].set_text("Gradient std per layer")
        self.titles["ratio"].set_text("Update / weight (aim 1e-3)")
        self.view.animate(
            [
                self._heat,
                self._pre_std,
                self._pre_mean,
                self._grad_line,
                self._loss_raw,
                self._loss_ema,
                self._acc_line,
                self._diverged_text,
            ]
        )
        self.view.animate([*self.titles.values(), self._tail_label], cache=True)

    # -- structure that depends on depth and activation --------------------------------------

    def build_layers(self, session: Session, activation: str, heat_view: bool) -> None:
        """(Re)create the artists whose number depends on the depth; remove the old ones."""
        ax = self.ax
        self.view.forget(self.layer_artists)
        for artist in self.layer_artists:
            artist.remove()
        n = len(session.probe.names)
        colors = layer_colors(n)
        x = np.arange(1, n + 1)
        edges = session.probe.edges.numpy()
        centers = (edges[:-1] + edges[1:]) / 2
        self._layer_x.clear().translate(-0.4, 0).scale(1 / (n + 0.2), 1)
        with style():
            self._hist_lines = [
                ax["hist"].plot(
                    centers, np.zeros_like(centers), color=col, lw=1.4, drawstyle="steps-mid"
                )[0]
                for col in colors
            ]
            self._bars = list(
                ax["tail"].bar(
                    x, np.zeros(n), color=colors, width=0.7, transform=self._layer_trans["tail"]
                )
            )
            numbers = [
                ax[name].text(
                    i + 1,
                    0,
                    str(i + 1),
                    color=col,
                    ha="center",
                    va="top",
                    fontsize=10,
                    transform=blended_transform_factory(
                        self._layer_x + ax[name].transAxes,
                        offset_copy(ax[name].transAxes, ax[name].figure, y=-4, units="points"),
                    ),
                )  # fmt: skip
                for name in ("pre", "tail", "grad")
                for i, col in enumerate(colors)
            ]
            self._ratio_lines = [
                ax["ratio"].plot([], [], color=col, lw=1.0)[0]
                for col in [*colors, OKABE_ITO["black"]]
            ]
            seps = [ax["heat"].axhline(k, color="white", lw=0.8) for k in range(1, n)]
        self.view.animate([*self._hist_lines, *self._bars, *self._ratio_lines])
        self.view.animate(numbers, cache=True)
        self.layer_artists = [*self._hist_lines, *self._bars, *self._ratio_lines, *seps, *numbers]
        ax["hist"].set_xlim(edges[0], edges[-1])
        ax["heat"].set_yticks(np.arange(n) + 0.5, [str(i + 1) for i in range(n)][::-1])
        ax["heat"].set_ylim(0, n)
        ax["heat"].set_ylabel(f"layer (values {edges[0]:g} to {edges[-1]:g} upwards)")
        self.tail_key = "dead" if activation == "relu" else "saturated"
        self._tail_label.set_text("dead %" if self.tail_key == "dead" else "saturated %")
        if heat_view:  # its ticks changed; hidden, it is rendered when shown again
            self.view.invalidate(ax["heat"])
        self.set_heat_view(heat_view)

    def set_heat_view(self, heat: bool) -> None:
        """Show the heat map (True) or the latest histograms in the first panel."""
        self.ax["hist"].set_visible(not heat)
        self.ax["heat"].set_visible(heat)
        self.ax["cbar"].set_visible(heat)

    # -- the data ----------------------------------------------------------------------------

    def show(self, s: Session, window: int, time_limit: float, ema: EMA) -> None:
        """Update every artist from the session (statistics averaged over the last
        ``window`` recorded steps; time axes up to ``time_limit``)."""
        n = len(s.probe.names)
        x = np.arange(1, n + 1)
        t = self.titles
        counts = s.probe.histograms()
        pct = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        for line, row in zip(self._hist_lines, pct):
            line.set_ydata(row)
        self._show_heat(s, n, time_limit)

        mean, std = s.recent("in_mean", window), s.recent("in_std", window)
        self._pre_std.set_data(x, std)
        self._pre_mean.set_data(x, mean)
        both = np.concatenate([std, mean])
        both = both[np.isfinite(both)]
        low, high = float(both.min(initial=0.0)), float(both.max(initial=1.0))
        lo = min(-nice_ceiling(-low) if low < 0 else 0.0, -0.5)
        sticky_ylim(self.ax["pre"], lo, nice_ceiling(1.35 * high), low, 1.2 * high)
        t["pre"].set_text(f"Pre-act. std {np.nanmin(std):.2g} to {np.nanmax(std):.2g}")

        tail = 100.0 * s.recent(self.tail_key, window)
        for bar, h in zip(self._bars, np.nan_to_num(tail)):
            bar.set_height(h)
        what = "dead ReLUs" if self.tail_key == "dead" else "saturated"
        t["tail"].set_text(f"{np.nanmean(tail):.0f}% {what} (mean)")

        g = s.recent("grad_std", window)
        self._grad_line.set_data(x, g)
        lo, hi = decades(g)
        sticky_ylim(self.ax["grad"], min(lo, 1e-5), max(hi, 1e-1), *finite_range(g), log=True)
        self._show_ratio(s, time_limit)
        self._show_loss(s, ema, time_limit)

    def _show_heat(self, s: Session, n: int, time_limit: float) -> None:
        steps, counts = s.probe.histograms_over_time()  # (T,), (T, L, B)
        self.ax["heat"].set_xlim(0, time_limit)
        if len(steps) == 0:
            return
        if len(steps) > HEAT_COLUMNS:
            # merge neighbouring steps so the image keeps a bounded number of columns
            starts = np.linspace(0, len(steps), HEAT_COLUMNS, endpoint=False).astype(int)
            counts = np.add.reduceat(counts, starts, axis=0)
        share = 100.0 * counts / np.maximum(counts.sum(axis=2, keepdims=True), 1)
        img = np.log10(share + 0.1)  # (T, L, B); log so that the tails stay visible
        img = img[:, ::-1, :].transpose(1, 2, 0).reshape(n * counts.shape[2], -1)  # layer 1 on top
        self._heat.set_data(img)
        self._heat.set_extent((0, max(s.step, 1), 0, n))

    def _show_ratio(self, s: Session, time_limit: float) -> None:
        self.ax["ratio"].set_xlim(0, time_limit)
        if not s.ratios:
            for line in self._ratio_lines:
                line.set_data([], [])
            return
        r = np.asarray(s.ratios)  # (T, matrices)
        for j, line in enumerate(self._ratio_lines):
            line.set_data(s.ratio_steps, r[:, j])
        lo, hi = decades(r.ravel())
        sticky_ylim(self.ax["ratio"], min(lo, 1e-5), max(hi, 1e-1), *finite_range(r), log=True)

    def _show_loss(self, s: Session, ema: EMA, time_limit: float) -> None:
        loss = np.asarray(s.loss)
        steps = np.arange(len(loss))
        self._loss_raw.set_data(steps, loss)
        self._loss_ema.set_data(steps, ema.update(s.loss))
        self._acc_line.set_data(s.test_steps, 100.0 * np.asarray(s.test_acc))
        finite = loss[np.isfinite(loss)]
        high = min(float(finite.max()) if finite.size else 3.0, 20.0)
        sticky_ylim(self.ax["loss"], 0, nice_ceiling(1.05 * high), 0, high)
        self.ax["loss"].set_xlim(0, time_limit)
        t = self.titles["loss"]
        if s.diverged:
            self._diverged_text.set_text(f"diverged at step {s.step}:\nlower lr or init scale")
            t.set_text("Loss became NaN or inf")
        else:
            self._diverged_text.set_text("")
            # the test accuracy changes every 50 steps, the loss at every step: only the former
            # is in the title (a changing title costs a glyph rendering per frame)
            t.set_text(f"Loss, test accuracy {100 * s.test_acc[-1]:.0f}%")

    def plotted(self) -> dict:
        """The data the panels show, read back from the artists (see
        :meth:`ActivationExplorer.plotted`)."""
        return {
            "layers": np.asarray(self._pre_std.get_xdata(), dtype=float),
            "hist_x": np.asarray(self._hist_lines[0].get_xdata(), dtype=float),
            "hist_pct": np.array([line.get_ydata() for line in self._hist_lines], dtype=float),
            "heatmap": np.asarray(self._heat.get_array(), dtype=float),
            "preact_mean": np.asarray(self._pre_mean.get_ydata(), dtype=float),
            "preact_std": np.asarray(self._pre_std.get_ydata(), dtype=float),
            f"{self.tail_key}_pct": np.array([b.get_height() for b in self._bars]),
            "grad_std": np.asarray(self._grad_line.get_ydata(), dtype=float),
            "ratio_steps": np.asarray(self._ratio_lines[0].get_xdata(), dtype=float),
            "update_ratio": np.array(
                [line.get_ydata() for line in self._ratio_lines], dtype=float
            ).T,
            "loss_steps": np.asarray(self._loss_raw.get_xdata(), dtype=float),
            "loss": np.asarray(self._loss_raw.get_ydata(), dtype=float),
            "loss_ema": np.asarray(self._loss_ema.get_ydata(), dtype=float),
            "test_steps": np.asarray(self._acc_line.get_xdata(), dtype=float),
            "test_acc_pct": np.asarray(self._acc_line.get_ydata(), dtype=float),
        }
