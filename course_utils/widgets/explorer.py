"""ActivationExplorer: train an MLP on MNIST live and watch every layer's statistics.

The controls choose the normalization, its placement, the activation, depth, width, the
initialisation scale, learning rate and batch size; the buttons train, pause, reset or take
a few steps. Six panels update in place while it trains:

1. the activation histogram of each layer (or, in the 'over time' view, a layer-by-step
   heat map of those histograms, fastai's 'colorful dimension');
2. the mean and std of each layer's *pre-activation* (the input of the nonlinearity, which
   with ``placement='before'`` is the normalization's output);
3. the share of saturated units (tanh / sigmoid) or dead units (ReLU) per layer;
4. the std of the gradient of the loss with respect to each layer's output;
5. the update-to-data ratio std(dW) / std(W) per weight matrix, with Karpathy's 1e-3 line;
6. the training loss and the test accuracy.

Training runs as an asyncio task in the kernel's event loop, a chunk of steps at a time,
and yields between chunks, so clicks and slider moves are handled while it trains; no
thread touches torch. The same object is driven from Python with :meth:`set` and
:meth:`step`, and :meth:`plotted` returns what the panels show.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import ipywidgets as W
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from ..data import load_mnist
from ._axes import EMA, decades, finite_range, log_axis, nice_ceiling, sqrt_clipped, sticky_ylim
from ._display import GREY, OKABE_ITO, FigureView, layer_colors, mimebundle, style, style_axes
from ._session import Config, Session

__all__ = ["ActivationExplorer"]

_NORMS = [
    ("none", "none"),
    ("batch norm", "batch"),
    ("layer norm", "layer"),
    ("group norm", "group"),
    ("RMS norm", "rms"),
]
_PLACEMENTS = [("before the activation", "before"), ("after the activation", "after")]
_ACTIVATIONS = ["tanh", "sigmoid", "relu"]
_WIDTHS = [16, 32, 50, 64, 100, 128, 200, 256]
_BATCHES = [2, 4, 8, 16, 32, 64, 128, 256]
_CONFIG_KEYS = (
    "norm",
    "placement",
    "activation",
    "depth",
    "width",
    "init_scale",
    "lr",
    "batch_size",
)
_HEAT_COLUMNS = 160  # the heat map shows at most this many time columns (older ones merged)
_RATIO_TARGET = 1e-3


class ActivationExplorer:
    """Live view of activations, gradients and updates of an MLP training on MNIST.

    Args:
        norm: ``"none"``, ``"batch"``, ``"layer"``, ``"group"`` or ``"rms"``.
        placement: ``"before"`` or ``"after"`` the activation.
        activation: ``"tanh"``, ``"sigmoid"`` or ``"relu"``.
        depth, width: hidden layers and units per layer.
        init_scale: weights ~ N(0, (init_scale / sqrt(fan_in))^2).
        lr, batch_size: plain SGD's learning rate and the mini-batch size.
        max_steps: the train button stops after this many steps.
        steps_per_update: training steps between two redraws.
        view: ``"histograms"`` or ``"over time"`` for the first panel.
        seed: seeds the weights and the batch order.

    Use: display the object in a notebook cell; or drive it from Python::

        ex = ActivationExplorer(activation="tanh", init_scale=3.0)
        ex.set(norm="batch")          # re-initialises once
        ex.step(100)                  # trains 100 steps and refreshes the plots
        ex.plotted()["preact_std"]    # what panel 2 shows, one value per layer
    """

    def __init__(
        self,
        norm: str = "none",
        placement: str = "before",
        activation: str = "tanh",
        depth: int = 4,
        width: int = 100,
        init_scale: float = 1.0,
        lr: float = 0.1,
        batch_size: int = 64,
        *,
        max_steps: int = 1000,
        steps_per_update: int = 10,
        view: str = "histograms",
        seed: int = 0,
    ):
        self.data = load_mnist()
        self.max_steps = int(max_steps)
        self.steps_per_update = max(1, int(steps_per_update))
        self.seed = seed
        self.session: Session | None = None
        self._task: asyncio.Task | None = None
        self._running = False
        self._hold = 0
        self._shape: tuple | None = None
        self._closed = False
        self._updates: list[float] = []  # redraw times, for the updates/s readout
        self.controls = self._make_controls(
            norm, placement, activation, depth, width, init_scale, lr, batch_size, view
        )
        self.view = FigureView((11.6, 6.4), dpi=80)
        self._build_figure()
        self.widget = self._make_layout()
        self._reinit()

    # -- controls ------------------------------------------------------------------------

    def _make_controls(
        self, norm, placement, activation, depth, width, init_scale, lr, batch, view
    ):
        wide = {"description_width": "initial"}
        box = W.Layout(width="250px")
        c = {
            "norm": W.Dropdown(
                options=_NORMS, value=norm, description="normalization", style=wide, layout=box
            ),
            "placement": W.Dropdown(
                options=_PLACEMENTS, value=placement, description="placed", style=wide, layout=box
            ),
            "activation": W.Dropdown(
                options=_ACTIVATIONS,
                value=activation,
                description="activation",
                style=wide,
                layout=box,
            ),
            "view": W.ToggleButtons(
                options=["histograms", "over time"],
                value=view,
                tooltips=["latest histogram per layer", "histograms over training (heat map)"],
                style={"button_width": "95px"},
            ),
            "depth": W.IntSlider(
                value=depth, min=1, max=8, description="depth", style=wide, layout=box
            ),
            "width": W.SelectionSlider(
                options=sorted({*_WIDTHS, int(width)}),
                value=int(width),
                description="width",
                style=wide,
                layout=box,
            ),
            "init_scale": W.FloatLogSlider(
                value=init_scale,
                base=10,
                min=-1,
                max=1,
                step=0.05,
                description="init scale",
                readout_format=".2f",
                style=wide,
                layout=box,
            ),
            "lr": W.FloatLogSlider(
                value=lr,
                base=10,
                min=-3,
                max=0.5,
                step=0.1,
                description="learning rate",
                readout_format=".3g",
                style=wide,
                layout=box,
            ),
            "batch_size": W.SelectionSlider(
                options=sorted({*_BATCHES, int(batch)}),
                value=int(batch),
                description="batch size",
                style=wide,
                layout=box,
            ),
        }
        for key in _CONFIG_KEYS:
            c[key].observe(self._on_config, names="value")
        c["view"].observe(self._on_view, names="value")
        self.buttons = {
            "train": W.Button(description="train", icon="play", button_style="success"),
            "pause": W.Button(description="pause", icon="pause", disabled=True),
            "reset": W.Button(description="reset", icon="refresh"),
            "step": W.Button(description=f"+{self.steps_per_update} steps", icon="step-forward"),
        }
        for b in self.buttons.values():
            b.layout = W.Layout(width="110px")
        self.buttons["train"].on_click(lambda _: self.train())
        self.buttons["pause"].on_click(lambda _: self.pause())
        self.buttons["reset"].on_click(lambda _: self.reset())
        self.buttons["step"].on_click(lambda _: self.step(self.steps_per_update))
        self.progress = W.IntProgress(
            value=0, min=0, max=self.max_steps, layout=W.Layout(width="180px"), description=""
        )
        self.status = W.HTML(layout=W.Layout(margin="0 0 0 8px"))
        return c

    def _make_layout(self) -> W.VBox:
        c = self.controls
        rows = [
            W.HBox([c["norm"], c["placement"], c["activation"], c["view"]]),
            W.HBox([c["depth"], c["width"], c["init_scale"]]),
            W.HBox([c["lr"], c["batch_size"]]),
            W.HBox([*self.buttons.values(), self.progress, self.status]),
            self.view.widget,
        ]
        for r in rows[:4]:
            r.layout = W.Layout(flex_flow="row wrap", align_items="center")
        return W.VBox(rows)

    @property
    def config(self) -> Config:
        """The configuration the controls show now."""
        c = self.controls
        return Config(**{k: c[k].value for k in _CONFIG_KEYS}, seed=self.seed)

    def set(self, **values) -> None:
        """Set several controls at once (``norm="batch", lr=0.5``, or ``view=...``) and
        re-initialise once; the plots show the new model's initial state."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(
                f"unknown controls {sorted(unknown)}; choose from {sorted(self.controls)}"
            )
        with self._held():
            for k, v in values.items():
                self.controls[k].value = v
        if any(k in _CONFIG_KEYS for k in values):
            self._reinit()

    @contextlib.contextmanager
    def _held(self):
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1

    def _on_config(self, change) -> None:
        if not self._hold:
            self._reinit()

    def _on_view(self, change) -> None:
        self._apply_view()
        self.view.redraw()

    # -- training ------------------------------------------------------------------------

    def _reinit(self) -> None:
        """Build a fresh session from the controls; the old one's hooks are removed."""
        if self.session is not None:
            self.session.close()
        self.session = Session(self.config, self.data, probe_every=5)
        self._updates.clear()
        self._ema = EMA(0.9)
        # the depth (ticks, legend, artists per layer) and the activation (histogram range,
        # labels) change the figure's structure; other controls only its data
        shape = (self.config.depth, self.config.activation)
        if shape != self._shape:
            self._build_layer_artists()
        self._refresh(full=shape != self._shape)
        self._shape = shape

    def reset(self) -> None:
        """Start again from the same initial weights (same seed) with the same controls."""
        self._reinit()

    def step(self, n: int = 1) -> int:
        """Train ``n`` steps now (synchronously) and refresh the plots; returns the step."""
        self.session.train(int(n))
        self._refresh()
        return self.session.step

    @property
    def training(self) -> bool:
        """True while the train button's task runs."""
        return self._task is not None and not self._task.done()

    def train(self) -> None:
        """Start training in the background (an asyncio task in the kernel's event loop)
        until ``max_steps``, pause, or divergence. Needs a running event loop (a Jupyter
        kernel); from a script use :meth:`step` or ``asyncio.run(explorer.run())``."""
        if self.training:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "train() needs a running event loop, as in a Jupyter kernel; "
                "from a script call step(n) or asyncio.run(explorer.run())"
            ) from None
        self._running = True
        self._task = loop.create_task(self.run())

    def pause(self) -> None:
        """Stop training after the current chunk of steps."""
        self._running = False

    async def run(self, steps: int | None = None, pause_s: float = 0.01) -> None:
        """Train ``steps`` more steps (default: up to ``max_steps``), redrawing after every
        ``steps_per_update`` and yielding ``pause_s`` seconds to the event loop in between,
        so widget messages are handled while it trains."""
        self._running = True
        left = steps
        self._sync_buttons()
        try:
            while self._running:
                s = self.session
                n = self.steps_per_update if left is None else min(self.steps_per_update, left)
                n = min(n, self.max_steps - s.step)
                if n <= 0 or s.diverged:
                    break
                done = s.train(n)
                if left is not None:
                    left -= done
                self._refresh(evaluate=False)
                await asyncio.sleep(pause_s)
        finally:
            self._running = False
            if not self._closed:
                self._sync_buttons()
                self._refresh()  # the final state, with its test accuracy

    def _sync_buttons(self) -> None:
        running = self._running
        self.buttons["train"].disabled = running
        self.buttons["pause"].disabled = not running
        self.buttons["step"].disabled = running

    # -- the figure ----------------------------------------------------------------------
    # Everything that changes at every update is 'animated' (blitted over a saved
    # background); axis limits move in 1-2-5 steps so the background is rarely re-rendered.

    def _build_figure(self) -> None:
        fig = self.view.figure
        with style():
            axes = fig.subplots(2, 3)
            fig.subplots_adjust(
                left=0.065, right=0.935, bottom=0.085, top=0.93, wspace=0.36, hspace=0.52
            )
            (
                (self.ax_hist, self.ax_pre, self.ax_tail),
                (self.ax_grad, self.ax_ratio, self.ax_loss),
            ) = axes
            for ax in axes.flat:
                style_axes(ax)
            # the heat map shares the first panel's place; one of the two is visible
            pos = self.ax_hist.get_position()
            self.ax_heat = fig.add_axes((pos.x0, pos.y0, pos.width * 0.86, pos.height))
            self.ax_cbar = fig.add_axes((pos.x0 + pos.width * 0.9, pos.y0, 0.008, pos.height))
            self._heat = self.ax_heat.imshow(
                np.zeros((2, 2)),
                aspect="auto",
                origin="lower",
                cmap="cividis",
                interpolation="nearest",
                vmin=-1,
                vmax=2,
            )
            cb = fig.colorbar(self._heat, cax=self.ax_cbar, ticks=[-1, 0, 1, 2])
            cb.ax.set_yticklabels(["0.1", "1", "10", "100"])
            cb.set_label("% of values", fontsize=8, labelpad=1)
            self.ax_cbar.tick_params(labelsize=7)
            self.ax_heat.set_xlabel("training step")
            self.ax_heat.tick_params(labelsize=8)

            self.ax_hist.set_xlabel("activation value")
            self.ax_hist.set_ylabel("% of values per bin (sqrt scale)")
            self.ax_hist.set_yscale("function", functions=(sqrt_clipped, np.square))
            self.ax_hist.set_ylim(0, 130)  # room at the top for the legend
            self.ax_hist.yaxis.set_major_locator(FixedLocator([0, 2, 10, 25, 50, 100]))
            self.ax_hist.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            self.ax_hist.xaxis.set_major_locator(MaxNLocator(5))

            self.ax_pre.set_xlabel("layer")
            self.ax_pre.set_ylabel("pre-activation mean, std")
            self.ax_pre.axhline(1.0, color=GREY, lw=0.8, ls=":")
            self.ax_pre.axhline(0.0, color=GREY, lw=0.8)
            (self._pre_std,) = self.ax_pre.plot([], [], "o-", color=OKABE_ITO["blue"], label="std")
            (self._pre_mean,) = self.ax_pre.plot(
                [], [], "s--", color=OKABE_ITO["orange"], label="mean"
            )
            self.ax_pre.legend(loc="upper right", frameon=False, ncols=2)

            self.ax_tail.set_xlabel("layer")
            self.ax_tail.set_ylim(0, 100)

            self.ax_grad.set_xlabel("layer")
            self.ax_grad.set_ylabel("std of dloss / d(output)")
            (self._grad_line,) = self.ax_grad.plot([], [], "o-", color=OKABE_ITO["vermillion"])

            self.ax_ratio.set_xlabel("training step")
            self.ax_ratio.set_ylabel("std(update) / std(weight)")
            self.ax_ratio.axhline(_RATIO_TARGET, color="black", lw=1.0, ls="--")
            self.ax_ratio.text(
                1.0,
                _RATIO_TARGET,
                " 1e-3",
                transform=self.ax_ratio.get_yaxis_transform(),
                va="center",
                ha="left",
                fontsize=8,
            )
            self.ax_ratio.text(
                0.02,
                0.97,
                "black: output layer",
                transform=self.ax_ratio.transAxes,
                va="top",
                fontsize=7,
                color=GREY,
            )
            for ax in (self.ax_grad, self.ax_ratio):
                log_axis(ax)

            self.ax_loss.set_xlabel("training step")
            self.ax_loss.set_ylabel("cross-entropy loss", color=OKABE_ITO["blue"])
            (self._loss_raw,) = self.ax_loss.plot([], [], color=OKABE_ITO["sky"], lw=0.6, alpha=0.7)
            (self._loss_ema,) = self.ax_loss.plot([], [], color=OKABE_ITO["blue"], lw=1.6)
            self.ax_acc = self.ax_loss.twinx()
            self.ax_acc.tick_params(labelsize=8)
            self.ax_acc.spines["top"].set_visible(False)
            self.ax_acc.set_ylim(0, 100)
            self.ax_acc.set_ylabel("test accuracy (%)", color=OKABE_ITO["vermillion"])
            (self._acc_line,) = self.ax_acc.plot(
                [], [], ".-", color=OKABE_ITO["vermillion"], lw=1.2, ms=4
            )
            self._diverged_text = self.ax_loss.text(
                0.5,
                0.5,
                "",
                transform=self.ax_loss.transAxes,
                ha="center",
                va="center",
                color=OKABE_ITO["vermillion"],
                fontsize=10,
                fontweight="bold",
            )
            self._titles = {}
            for name, ax in [
                ("hist", self.ax_hist),
                ("heat", self.ax_heat),
                ("pre", self.ax_pre),
                ("tail", self.ax_tail),
                ("grad", self.ax_grad),
                ("ratio", self.ax_ratio),
                ("loss", self.ax_loss),
            ]:
                # a fixed title position: finding it automatically costs a layout per draw
                self._titles[name] = ax.set_title(" ", fontsize=10, y=1.02)
        self._titles["ratio"].set_text("Update-to-data ratio (aim: about 1e-3)")
        self._titles["heat"].set_text("Layer outputs over training")
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
        self.view.animate(self._titles.values(), cache=True)
        self._layer_artists: list = []

    def _build_layer_artists(self) -> None:
        """(Re)create the artists whose number depends on depth; remove the old ones."""
        self.view.forget(self._layer_artists)
        for artist in self._layer_artists:
            artist.remove()
        s = self.session
        n = len(s.probe.names)
        colors = layer_colors(n)
        x = np.arange(1, n + 1)
        edges = s.probe.edges.numpy()
        self._centers = (edges[:-1] + edges[1:]) / 2
        with style():
            self._hist_lines = [
                self.ax_hist.plot(
                    self._centers,
                    np.zeros_like(self._centers),
                    color=col,
                    lw=1.4,
                    drawstyle="steps-mid",
                    label=f"layer {i + 1}",
                )[0]
                for i, col in enumerate(colors)
            ]
            legend = self.ax_hist.legend(
                loc="upper center",
                frameon=False,
                ncols=min(n, 4),
                fontsize=7,
                handlelength=1.2,
                columnspacing=0.8,
            )
            self._bars = list(self.ax_tail.bar(x, np.zeros(n), color=colors, width=0.7))
            self._ratio_lines = [
                self.ax_ratio.plot([], [], color=col, lw=1.0)[0]
                for col in [*colors, OKABE_ITO["black"]]
            ]
            seps = [self.ax_heat.axhline(k, color="white", lw=0.8) for k in range(1, n)]
        self.view.animate([*self._hist_lines, *self._bars, *self._ratio_lines])
        self._layer_artists = [*self._hist_lines, legend, *self._bars, *self._ratio_lines, *seps]
        self.ax_hist.set_xlim(edges[0], edges[-1])
        for ax in (self.ax_pre, self.ax_tail, self.ax_grad):
            ax.set_xlim(0.4, n + 0.6)
            ax.set_xticks(x)
        self.ax_heat.set_yticks(np.arange(n) + 0.5, [f"layer {i + 1}" for i in range(n)][::-1])
        self.ax_heat.set_ylim(0, n)
        self.ax_heat.set_ylabel(f"bins {edges[0]:g} to {edges[-1]:g}, upwards", fontsize=8)
        self._tail_key = "dead" if self.config.activation == "relu" else "saturated"
        self.ax_tail.set_ylabel(
            "dead units (%)" if self._tail_key == "dead" else "saturated outputs (%)"
        )
        self._apply_view()

    def _apply_view(self) -> None:
        heat = self.controls["view"].value == "over time"
        self.ax_hist.set_visible(not heat)
        self.ax_heat.set_visible(heat)
        self.ax_cbar.set_visible(heat)

    def _refresh(self, full: bool = False, evaluate: bool = True) -> None:
        """Update every artist in place from the session, then redraw. ``evaluate=False``
        (while training) measures the test accuracy only every 50 steps."""
        s = self.session
        if evaluate and s.test_steps[-1] != s.step:
            s.evaluate()
        else:
            s.maybe_evaluate(every=50)
        window = max(self.steps_per_update, s.probe_every)
        n = len(s.probe.names)
        x = np.arange(1, n + 1)
        t = self._titles

        counts = s.probe.histograms()
        pct = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        for line, row in zip(self._hist_lines, pct):
            line.set_ydata(row)
        # the y axis is fixed (square-root scale, 0 to 100%): flat and saturated layers both
        # show, and limits that never move never force a re-render
        # no step number here (it is in the status line): a title that changes at every
        # update costs a glyph rendering per frame
        t["hist"].set_text("Layer outputs, latest histogram")
        self._refresh_heat(s, n)

        mean, std = s.recent("in_mean", window), s.recent("in_std", window)
        self._pre_std.set_data(x, std)
        self._pre_mean.set_data(x, mean)
        both = np.concatenate([std, mean])
        both = both[np.isfinite(both)]
        low = float(both.min(initial=0.0))
        high = float(both.max(initial=1.0))
        lo = min(-nice_ceiling(-low) if low < 0 else 0.0, -0.5)
        sticky_ylim(self.ax_pre, lo, nice_ceiling(1.35 * high), low, 1.2 * high)
        t["pre"].set_text(f"Pre-activation std: {np.nanmin(std):.2g} to {np.nanmax(std):.2g}")

        tail = 100.0 * s.recent(self._tail_key, window)
        for bar, h in zip(self._bars, np.nan_to_num(tail)):
            bar.set_height(h)
        what = "dead ReLUs" if self._tail_key == "dead" else "saturated outputs"
        t["tail"].set_text(f"{np.nanmean(tail):.0f}% {what} (mean of layers)")

        g = s.recent("grad_std", window)
        self._grad_line.set_data(x, g)
        lo, hi = decades(g)
        sticky_ylim(self.ax_grad, min(lo, 1e-5), max(hi, 1e-1), *finite_range(g), log=True)
        # a fixed title: one that changes at every update costs a glyph rendering per frame
        t["grad"].set_text("Gradient std per layer")

        self._refresh_ratio(s)
        self._refresh_loss(s)
        self.progress.value = min(s.step, self.max_steps)
        self.status.value = self._status_text(s)
        self.view.redraw(full)

    def _refresh_heat(self, s: Session, n: int) -> None:
        steps, counts = s.probe.histograms_over_time()  # (T,), (T, L, B)
        self.ax_heat.set_xlim(0, self._time_limit(s))
        if len(steps) == 0:
            return
        if len(steps) > _HEAT_COLUMNS:
            # merge neighbouring steps so the image keeps a bounded number of columns
            starts = np.linspace(0, len(steps), _HEAT_COLUMNS, endpoint=False).astype(int)
            counts = np.add.reduceat(counts, starts, axis=0)
        share = 100.0 * counts / np.maximum(counts.sum(axis=2, keepdims=True), 1)
        img = np.log10(share + 0.1)  # (T, L, B); log so that the tails stay visible
        img = img[:, ::-1, :].transpose(1, 2, 0).reshape(n * counts.shape[2], -1)  # layer 1 on top
        self._heat.set_data(img)
        self._heat.set_extent((0, max(s.step, 1), 0, n))

    def _refresh_ratio(self, s: Session) -> None:
        self.ax_ratio.set_xlim(0, self._time_limit(s))
        if not s.ratios:
            for line in self._ratio_lines:
                line.set_data([], [])
            return
        r = np.asarray(s.ratios)  # (T, matrices)
        for j, line in enumerate(self._ratio_lines):
            line.set_data(s.ratio_steps, r[:, j])
        lo, hi = decades(r.ravel())
        sticky_ylim(self.ax_ratio, min(lo, 1e-5), max(hi, 1e-1), *finite_range(r), log=True)

    def _refresh_loss(self, s: Session) -> None:
        loss = np.asarray(s.loss)
        steps = np.arange(len(loss))
        ema = self._ema.update(s.loss)
        self._loss_raw.set_data(steps, loss)
        self._loss_ema.set_data(steps, ema)
        self._acc_line.set_data(s.test_steps, 100.0 * np.asarray(s.test_acc))
        finite = loss[np.isfinite(loss)]
        high = min(float(finite.max()) if finite.size else 3.0, 20.0)
        sticky_ylim(self.ax_loss, 0, nice_ceiling(1.05 * high), 0, high)
        self.ax_loss.set_xlim(0, self._time_limit(s))
        t = self._titles["loss"]
        if s.diverged:
            self._diverged_text.set_text(f"diverged at step {s.step}:\nlower the lr or init scale")
            t.set_text("Loss became NaN or inf")
        else:
            self._diverged_text.set_text("")
            # the test accuracy changes every 50 steps, the loss at every step: only the former
            # is in the title (a changing title costs a glyph rendering per frame)
            t.set_text(f"Loss and test accuracy ({100 * s.test_acc[-1]:.0f}%)")

    def _time_limit(self, s: Session) -> float:
        # time axes grow in steps (50, 75, 100, 150, ...): each growth re-renders the figure,
        # a handful of times per run rather than at every update
        return nice_ceiling(max(s.step, 50))

    def _status_text(self, s: Session) -> str:
        now = time.perf_counter()
        self._updates = [t for t in self._updates if now - t < 2.0] + [now]
        span = now - self._updates[0]
        rate = (len(self._updates) - 1) / span if self.training and span > 0 else 0.0
        c = s.config
        norm = (
            "no normalization"
            if c.norm == "none"
            else f"{c.norm} norm {c.placement} the activation"
        )
        text = (
            f"step <b>{s.step}</b> / {self.max_steps} &middot; {c.activation}, {norm}, "
            f"{c.depth}&times;{c.width}, init scale {c.init_scale:.2f}, lr {c.lr:.3g}, "
            f"batch {c.batch_size}"
        )
        if rate > 0:
            text += f" &middot; {rate:.0f} updates/s"
        if s.diverged:
            text += " &middot; <b>diverged</b>"
        return text

    # -- what the panels show ------------------------------------------------------------

    def plotted(self) -> dict:
        """The data the panels show now, read back from the plotted artists.

        Returns a dict of NumPy arrays (L layers, B bins):
            ``step``: optimizer steps taken; ``layers``: (L,) 1..L;
            ``hist_x``: (B,) bin centres; ``hist_pct``: (L, B) % of each layer's outputs per
            bin (panel 1); ``heatmap``: (L*B, columns) log10 % (the 'over time' view);
            ``preact_mean``, ``preact_std``: (L,) of the pre-activation (panel 2);
            ``saturated_pct`` (tanh, sigmoid) or ``dead_pct`` (ReLU): (L,) (panel 3);
            ``grad_std``: (L,) (panel 4); ``ratio_steps``: (R,), ``update_ratio``: (R, L+1)
            (panel 5, last column the output layer); ``loss_steps``, ``loss``, ``loss_ema``:
            (T,); ``test_steps``, ``test_acc_pct`` (panel 6); ``diverged``: bool.
        """
        s = self.session
        out = {
            "step": s.step,
            "layers": np.asarray(self._pre_std.get_xdata(), dtype=float),
            "hist_x": np.asarray(self._hist_lines[0].get_xdata(), dtype=float),
            "hist_pct": np.array([line.get_ydata() for line in self._hist_lines], dtype=float),
            "heatmap": np.asarray(self._heat.get_array(), dtype=float),
            "preact_mean": np.asarray(self._pre_mean.get_ydata(), dtype=float),
            "preact_std": np.asarray(self._pre_std.get_ydata(), dtype=float),
            f"{self._tail_key}_pct": np.array([b.get_height() for b in self._bars]),
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
            "diverged": s.diverged,
        }
        return out

    # -- display and clean-up ------------------------------------------------------------

    def close(self) -> None:
        """Stop training, detach the probes and close the widgets."""
        self._running = False
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.session is not None:
            self.session.close()
        self.view.close()
        self.widget.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ActivationExplorer(norm={c.norm!r}, placement={c.placement!r}, "
            f"activation={c.activation!r}, depth={c.depth}, width={c.width}, "
            f"init_scale={c.init_scale:.3g}, lr={c.lr:.3g}, batch_size={c.batch_size}; "
            f"step {self.session.step})"
        )

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return mimebundle(self.widget, self.view, repr(self))
