"""ActivationExplorer: train an MLP on MNIST live and watch every layer's statistics.

The controls choose the normalization, its placement, the activation, depth, width, the
initialisation scale, learning rate and batch size; the buttons train, pause, reset or take
a few steps. Six panels update in place while it trains (see
:mod:`course_utils.widgets._explorer_figure`): the activation histograms (or a layer-by-step
heat map, fastai's 'colorful dimension'), each layer's pre-activation mean and std, the share
of saturated or dead units, the gradient std, the update-to-data ratio with Karpathy's 1e-3
line, and the loss with the test accuracy.

Training runs as an asyncio task in the kernel's event loop, a chunk of steps at a time,
and yields between chunks, so clicks and slider moves are handled while it trains; no
thread touches torch. The same object is driven from Python with :meth:`set` and
:meth:`step`, and :meth:`plotted` returns what the panels show.
"""

from __future__ import annotations

import asyncio
import time

import ipywidgets as W

from ..data import load_mnist
from ._axes import EMA, nice_ceiling
from ._base import CourseWidget, choice_slider, dropdown, int_slider, row, toggle
from ._explorer_figure import ExplorerFigure
from ._session import Config, Session

__all__ = ["ActivationExplorer"]

_NORMS = [
    ("none", "none"),
    ("batch norm", "batch"),
    ("layer norm", "layer"),
    ("group norm", "group"),
    ("RMS norm", "rms"),
]
_PLACEMENTS = [("before activation", "before"), ("after activation", "after")]
_ACTIVATIONS = ["tanh", "sigmoid", "relu"]
_WIDTHS = [16, 32, 50, 64, 100, 128, 200, 256]
_BATCHES = [2, 4, 8, 16, 32, 64, 128, 256]
# every value a learner needs, one slider step each (a continuous log slider on a short
# track jumped from 2 to 10 in a 60-pixel drag)
_INIT_SCALES = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0]
_LRS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0]
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


class ActivationExplorer(CourseWidget):
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
        super().__init__()
        self.data = load_mnist()
        self.max_steps = int(max_steps)
        self.steps_per_update = max(1, int(steps_per_update))
        self.seed = seed
        self.session: Session | None = None
        self._task: asyncio.Task | None = None
        self._running = False
        self._structure: tuple | None = None  # (depth, activation) the figure is built for
        self._update_times: list[float] = []  # for the updates/s readout
        self.controls = {
            "norm": dropdown("normalization", _NORMS, norm, "215px"),
            "placement": dropdown("placed", _PLACEMENTS, placement, "215px"),
            "activation": dropdown("activation", _ACTIVATIONS, activation, "160px"),
            "view": toggle(
                ["histograms", "over time"], view, "100px",
                ["latest histogram per layer", "histograms over training (heat map)"],
            ),
            "depth": int_slider("depth", depth, 1, 8),
            "width": choice_slider("width", _WIDTHS, int(width), "{:d}"),
            "init_scale": choice_slider("init scale", _INIT_SCALES, float(init_scale), "{:.2g}"),
            "lr": choice_slider("learning rate", _LRS, float(lr), "{:.3g}"),
            "batch_size": choice_slider("batch size", _BATCHES, int(batch_size), "{:d}"),
        }  # fmt: skip
        self.buttons = {
            "train": W.Button(description="train", icon="play", button_style="success"),
            "pause": W.Button(description="pause", icon="pause", disabled=True),
            "reset": W.Button(description="reset", icon="refresh"),
            "step": W.Button(description=f"+{self.steps_per_update} steps", icon="step-forward"),
        }
        for name, b in self.buttons.items():  # wide enough for their labels at 13 px
            b.layout = W.Layout(width="118px" if name == "step" else "100px")
        self.buttons["train"].on_click(lambda _: self.train())
        self.buttons["pause"].on_click(lambda _: self.pause())
        self.buttons["reset"].on_click(lambda _: self.reset())
        self.buttons["step"].on_click(lambda _: self.step(self.steps_per_update))
        self.progress = W.IntProgress(
            value=0, min=0, max=self.max_steps, layout=W.Layout(width="160px")
        )
        self.status = W.HTML(layout=W.Layout(margin="0 0 0 4px"))
        self.figure = ExplorerFigure()
        self.view = self.figure.view
        c = self.controls
        self.widget = W.VBox(
            [
                row([c["norm"], c["placement"], c["activation"], c["view"]]),
                row([c["depth"], c["width"], c["init_scale"]]),
                row([c["lr"], c["batch_size"]]),
                row([*self.buttons.values(), self.progress]),
                self.status,
                self.view.widget,
            ]
        )
        self.watch_controls()
        self._reinit()

    @property
    def config(self) -> Config:
        """The configuration the controls show now."""
        c = self.controls
        return Config(**{k: c[k].value for k in _CONFIG_KEYS}, seed=self.seed)

    def apply(self, changed: set[str]) -> None:
        """A configuration control re-initialises the model; the view control only swaps the
        first panel."""
        if changed & set(_CONFIG_KEYS):
            self._reinit()
        elif "view" in changed:
            self.figure.set_heat_view(self.controls["view"].value == "over time")
            self.view.redraw()

    # -- training ----------------------------------------------------------------------------

    def _reinit(self) -> None:
        """Build a fresh session from the controls; the old one's hooks are removed."""
        if self.session is not None:
            self.session.close()
        self.session = Session(self.config, self.data, probe_every=5)
        self._update_times.clear()
        self._ema = EMA(0.9)
        # the depth (ticks, legend, artists per layer) and the activation (histogram range,
        # labels) change the figure's structure; other controls only its data
        structure = (self.config.depth, self.config.activation)
        if structure != self._structure:
            self.figure.build_layers(
                self.session, self.config.activation, self.controls["view"].value == "over time"
            )
            self._structure = structure
        self._refresh()

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

    async def run(self, steps: int | None = None, pause_s: float = 0.005) -> None:
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
                self._refresh(evaluate=False, live=True)
                await asyncio.sleep(pause_s)
        finally:
            self._running = False
            if not self._closed:
                self._sync_buttons()
                self._refresh()  # the final state, with its test accuracy, at full resolution

    def _sync_buttons(self) -> None:
        running = self._running
        self.buttons["train"].disabled = running
        self.buttons["pause"].disabled = not running
        self.buttons["step"].disabled = running

    def _refresh(self, evaluate: bool = True, live: bool = False) -> None:
        """Update the figure and the status line from the session, then redraw.
        ``evaluate=False`` (while training) measures the test accuracy only every 50 steps."""
        s = self.session
        if evaluate and s.test_steps[-1] != s.step:
            s.evaluate()
        else:
            s.maybe_evaluate(every=50)
        # time axes grow in steps (50, 75, 100, 150, ...): each growth renders those panels
        # again, a handful of times per run rather than at every update
        time_limit = nice_ceiling(max(s.step, 50))
        window = max(self.steps_per_update, s.probe_every)
        self.figure.show(s, window, time_limit, self._ema)
        self.progress.value = min(s.step, self.max_steps)
        self.status.value = self._status_text(s)
        self.view.redraw(live=live)

    def _status_text(self, s: Session) -> str:
        now = time.perf_counter()
        self._update_times = [t for t in self._update_times if now - t < 2.0] + [now]
        span = now - self._update_times[0]
        rate = (len(self._update_times) - 1) / span if self.training and span > 0 else 0.0
        c = s.config
        norm = "no normalization" if c.norm == "none" else f"{c.norm} norm {c.placement} it"
        text = (
            f"step <b>{s.step}</b> / {self.max_steps} &middot; {c.activation}, {norm}, "
            f"{c.depth}&times;{c.width}, init scale {c.init_scale:g}, lr {c.lr:.3g}, "
            f"batch {c.batch_size}"
        )
        if rate > 0:
            text += f" &middot; {rate:.0f} updates/s"
        if s.diverged:
            text += " &middot; <b>diverged</b>"
        return text

    # -- what the panels show ----------------------------------------------------------------

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
        return {
            "step": self.session.step,
            **self.figure.plotted(),
            "diverged": self.session.diverged,
        }

    # -- clean-up ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop training, detach the probes and close the widgets."""
        self._running = False
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.session is not None:
            self.session.close()
        super().close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ActivationExplorer(norm={c.norm!r}, placement={c.placement!r}, "
            f"activation={c.activation!r}, depth={c.depth}, width={c.width}, "
            f"init_scale={c.init_scale:.3g}, lr={c.lr:.3g}, batch_size={c.batch_size}; "
            f"step {self.session.step})"
        )
