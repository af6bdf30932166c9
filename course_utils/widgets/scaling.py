"""ScalingExplorer: gradient descent on a badly scaled 2-D regression, four ways of scaling.

The data (:func:`course_utils.data.badly_scaled_2d`) has two features whose standard
deviations differ 100-fold. Each column of the widget scales them one way (none, min-max,
standardization, robust: median and interquartile range), shows the scaled data, and runs
plain gradient descent from w = 0 on the least-squares loss, drawn over its contours. The
learning rate is shared (or set to each problem's own 1/L), so the panels show why a
badly conditioned problem, condition number kappa = L / mu of the loss's Hessian, forces
a small step and then crawls along the valley.

The loss keeps an intercept, solved exactly, so the picture stays 2-D: features and targets
are centred, and L(w) = 1/2 mean((Xc w - yc)^2). The scalers, the Hessian, the gradient
descent and the loss surface are the lesson's own, from :mod:`course_utils.experiments.scaling`.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
from matplotlib.ticker import MaxNLocator

from ..data import badly_scaled_2d
from ..experiments.scaling import (
    MinMaxScaler,
    RobustScaler,
    Standardizer,
    gradient_descent,
    hessian,
    loss_surface,
)
from ._base import CourseWidget, row, toggle
from ._display import GREY, OKABE_ITO, FigureView, grid_positions, pin_labels, style, style_axes

__all__ = ["ScalingExplorer", "SCALERS", "scale_features"]

SCALERS = ("raw", "min-max", "standardized", "robust")
_SCALER_CLASSES = {"min-max": MinMaxScaler, "standardized": Standardizer, "robust": RobustScaler}
_COLORS = dict(
    zip(
        SCALERS,
        (OKABE_ITO["vermillion"], OKABE_ITO["orange"], OKABE_ITO["blue"], OKABE_ITO["green"]),
    )
)
_LR_MODES = [("same learning rate", "same"), ("each its own 1/L", "tuned")]


def scale_features(X: np.ndarray, method: str) -> np.ndarray:
    """Scale each column of ``X`` (n, d) by ``method`` with the lesson's scalers (fitted on
    ``X``); returns (n, d). ``raw``: unchanged; ``min-max``: to [0, 1]; ``standardized``:
    zero mean, unit std; ``robust``: minus the median, divided by the interquartile range."""
    if method == "raw":
        return np.array(X, dtype=np.float64)
    if method not in _SCALER_CLASSES:
        raise ValueError(f"method must be one of {SCALERS}, got {method!r}")
    return _SCALER_CLASSES[method]().fit(X).transform(X)


def _level(Xc: np.ndarray, yc: np.ndarray, w: np.ndarray) -> float:
    """The loss at one point w (2,)."""
    return float(loss_surface(Xc, yc, np.array([w[0]]), np.array([w[1]]))[0, 0])


class ScalingExplorer(CourseWidget):
    """Raw vs min-max vs standardized vs robust scaling, seen by gradient descent.

    Args:
        lr: the shared learning rate (``lr_mode="same"``).
        steps: gradient-descent steps.
        lr_mode: ``"same"`` (one lr for all four) or ``"tuned"`` (each uses 1/L, L the
            largest eigenvalue of its Hessian: the largest step that is always safe).
        outliers: put 2% of the samples' first feature at 20 to 40 standard deviations.
        n, scales, seed: passed to :func:`~course_utils.data.badly_scaled_2d`.

    Drive it from Python with :meth:`set` (``se.set(lr=1e-4)``); :meth:`plotted` returns
    what it shows.
    """

    def __init__(
        self,
        lr: float = 0.5,
        steps: int = 30,
        lr_mode: str = "same",
        outliers: bool = False,
        n: int = 200,
        scales: tuple[float, float] = (1.0, 100.0),
        seed: int = 0,
    ):
        super().__init__()
        self._data_args = (n, scales, seed)
        wide = {"description_width": "initial"}
        # the data first: the paths depend on it
        self.controls = {
            "outliers": W.Checkbox(
                value=outliers, description="add outliers to feature 1", indent=False,
                layout=W.Layout(width="220px"),
            ),
            "lr": W.FloatLogSlider(
                value=lr, base=10, min=-5, max=1, step=0.05, description="learning rate",
                readout_format=".2g", style=wide, layout=W.Layout(width="400px"),
            ),
            "steps": W.IntSlider(
                value=steps, min=1, max=200, description="steps", style=wide,
                layout=W.Layout(width="330px"),
            ),
            "lr_mode": toggle(_LR_MODES, lr_mode, "160px"),
        }  # fmt: skip
        self.table = W.HTML()
        self.view = FigureView(self._layout)
        self._make_problems()
        self._build_figure()
        self.view.fit()
        self._build_data_artists()
        c = self.controls
        self.widget = W.VBox(
            [
                row([c["lr"], c["steps"]]),
                row([c["lr_mode"], c["outliers"]]),
                self.table,
                self.view.widget,
            ]
        )
        self.watch_controls()
        self.apply(set())

    # -- the problems ------------------------------------------------------------------------

    def _make_problems(self) -> None:
        n, scales, seed = self._data_args
        X, y, w_true = badly_scaled_2d(n, scales, seed)
        if self.controls["outliers"].value:
            rng = np.random.default_rng(seed + 1)
            k = max(1, int(0.02 * n))
            idx = rng.choice(n, size=k, replace=False)
            X = X.copy()
            X[idx, 0] = X[:, 0].mean() + X[:, 0].std() * (20 + 20 * rng.random(k))
            y = X @ w_true + 0.1 * rng.normal(size=n)
        self.problems = {}
        for m in SCALERS:
            Xs = scale_features(X, m)
            Xc, yc = Xs - Xs.mean(0), y - y.mean()  # the intercept, solved exactly
            eig = np.linalg.eigvalsh(hessian(Xc))
            w_star = np.linalg.lstsq(Xc, yc, rcond=None)[0]
            self.problems[m] = {
                "X": Xs,
                "Xc": Xc,
                "yc": yc,
                "L": float(eig[-1]),
                "mu": float(eig[0]),
                "w_star": w_star,
                "loss_star": _level(Xc, yc, w_star),
            }

    def _window(self, p: dict) -> tuple[float, float, float, float]:
        """A square window around the start (0, 0) and the minimum, with a margin."""
        pts = np.array([[0.0, 0.0], p["w_star"]])
        centre = pts.mean(0)
        half = 0.75 * max(np.abs(pts - centre).max(), 1e-3) + 0.15 * max(
            np.abs(p["w_star"]).max(), 1e-3
        )
        return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half

    # -- figure ------------------------------------------------------------------------------

    def _layout(self, width: int) -> int:
        """Four columns (one per scaling) of square panels: data on top, loss below."""
        left, right, wgap, top, bottom, hgap = 58, 16, 78, 44, 46, 84
        side = int((width - left - right - 3 * wgap) / 4)
        height = top + bottom + hgap + 2 * side
        cells = grid_positions(
            width, height, 2, 4, left=left, right=right, top=top, bottom=bottom, wgap=wgap,
            hgap=hgap,
        )  # fmt: skip
        for j, m in enumerate(SCALERS):
            self.ax_data[m].set_position(cells[0][j])
            self.ax_loss[m].set_position(cells[1][j])
        return height

    def _build_figure(self) -> None:
        fig = self.view.figure
        self.ax_data, self.ax_loss = {}, {}
        self._paths, self._ends = {}, {}
        with style():
            for m in SCALERS:
                self.ax_data[m] = fig.add_axes((0, 0, 1, 1))
                self.ax_loss[m] = fig.add_axes((0, 0, 1, 1))
                for ax in (self.ax_data[m], self.ax_loss[m]):
                    style_axes(ax)
                    # square cells and square windows: equal aspect without set_aspect,
                    # which would move the limits or the box at every draw
                    ax.xaxis.set_major_locator(MaxNLocator(3))
                    ax.yaxis.set_major_locator(MaxNLocator(3))
                    pin_labels(ax, below=19, left=27)
                self.ax_data[m].set_xlabel("feature 1")
                self.ax_data[m].set_ylabel("feature 2")
                self.ax_loss[m].set_xlabel("w1")
                self.ax_loss[m].set_ylabel("w2")
                self.ax_data[m].set_title(
                    m, fontsize=11, fontweight="bold", color=_COLORS[m], y=1.12
                )
                (self._paths[m],) = self.ax_loss[m].plot(
                    [], [], ".-", color=_COLORS[m], lw=1.3, ms=4
                )
                (self._ends[m],) = self.ax_loss[m].plot([], [], "*", color="black", ms=10)
                self.ax_loss[m].plot([0], [0], "o", color=GREY, ms=5)
        self.view.animate([*self._paths.values(), *self._ends.values()])
        # the condition numbers sit in the gap the panels above use for their labels
        self._kappa = {m: self.ax_loss[m].set_title(" ", fontsize=10.5, y=1.02) for m in SCALERS}
        self.view.animate(self._kappa.values(), cache=True)

    def _build_data_artists(self) -> None:
        """Scatter plots and loss contours for the current data (static until it changes)."""
        for artist in getattr(self, "_static", []):
            artist.remove()
        self._static, self._scatter = [], {}
        for m in SCALERS:
            p = self.problems[m]
            ax, lax = self.ax_data[m], self.ax_loss[m]
            Xs = p["X"]
            with style():
                self._scatter[m] = ax.scatter(
                    Xs[:, 0], Xs[:, 1], s=6, color=_COLORS[m], alpha=0.6, lw=0
                )
                lim = 1.05 * np.abs(Xs).max()
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
                sd = Xs.std(0)
                std_text = ax.text(
                    0.5, 1.02, f"std {sd[0]:.2g}, {sd[1]:.2g}", transform=ax.transAxes,
                    ha="center", va="bottom", fontsize=10, color=GREY,
                )  # fmt: skip
                x0, x1, y0, y1 = self._window(p)
                w1, w2 = np.linspace(x0, x1, 121), np.linspace(y0, y1, 121)
                z = loss_surface(p["Xc"], p["yc"], w1, w2)
                start = _level(p["Xc"], p["yc"], np.zeros(2))
                levels = p["loss_star"] + (start - p["loss_star"]) * np.geomspace(1e-3, 4, 10)
                cs = lax.contour(w1, w2, z, levels=levels, colors=GREY, linewidths=0.7)
                lax.set_xlim(x0, x1)
                lax.set_ylim(y0, y1)
                (opt,) = lax.plot(*p["w_star"], "x", color="black", ms=7, mew=1.5)
            self._kappa[m].set_text(f"κ = {p['L'] / p['mu']:.3g}")
            self._static += [self._scatter[m], std_text, cs, opt]
        self.view.invalidate(*self.ax_data.values(), *self.ax_loss.values())

    # -- updates -----------------------------------------------------------------------------

    def prepare(self, key: str) -> None:
        if key == "outliers":
            self._make_problems()
            self._build_data_artists()

    def apply(self, changed: set[str]) -> None:
        c = self.controls
        steps, mode = c["steps"].value, c["lr_mode"].value
        self.results = {}
        for m in SCALERS:
            p = self.problems[m]
            lr = c["lr"].value if mode == "same" else 1.0 / p["L"]
            path, losses = gradient_descent(p["Xc"], p["yc"], lr, steps)
            # the lesson's gradient descent stops before the loss overflows
            overflowed = len(path) < steps + 1
            diverged = overflowed or lr >= 2.0 / p["L"]
            final = float("inf") if overflowed else float(losses[-1])
            shown = self._clip(path, self._window(p))
            self._paths[m].set_data(shown[:, 0], shown[:, 1])
            self._ends[m].set_data(shown[-1:, 0], shown[-1:, 1])
            self.results[m] = {
                "lr": lr,
                "kappa": p["L"] / p["mu"],
                "max_stable_lr": 2.0 / p["L"],
                "path": path,
                "final_loss": final,
                "loss_gap": final - p["loss_star"],
                "diverged": diverged,
            }
        self.table.value = self._table(steps)
        self.view.redraw()

    def _table(self, steps: int) -> str:
        cells = []
        for m in SCALERS:
            r = self.results[m]
            if r["diverged"]:
                verdict = f"<b>diverges</b>: lr &gt; 2/L = {r['max_stable_lr']:.2g}"
            elif r["loss_gap"] < 1e-9:
                verdict = "at the minimum"
            else:
                verdict = f"loss gap {r['loss_gap']:.1e}"
            cells.append(
                f"<td style='padding:0 14px 0 0'><b style='color:{_COLORS[m]}'>{m}</b>: "
                f"lr {r['lr']:.2g}, {verdict}</td>"
            )
        return (
            f"<div>After {steps} steps of gradient descent from w = 0:</div>"
            f"<table style='font-size:13px'><tr>{''.join(cells[:2])}</tr>"
            f"<tr>{''.join(cells[2:])}</tr></table>"
        )

    @staticmethod
    def _clip(path: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
        """The path up to its first point far outside the window (a diverging run)."""
        x0, x1, y0, y1 = window
        span = max(x1 - x0, y1 - y0)
        far = ~np.isfinite(path).all(1) | (
            np.abs(path - [(x0 + x1) / 2, (y0 + y1) / 2]).max(1) > 3 * span
        )
        if far.any():
            return path[: max(int(np.argmax(far)), 1)]
        return path

    # -- what it shows -----------------------------------------------------------------------

    def plotted(self) -> dict:
        """What the figure shows, per scaling method (``"raw"``, ``"min-max"``,
        ``"standardized"``, ``"robust"``): a dict with ``X`` (n, 2) the scaled data (from
        the scatter plot), ``path`` (k, 2) the drawn gradient-descent path (cut where it
        leaves the picture), ``lr``, ``kappa`` (condition number), ``max_stable_lr``
        (2/L), ``final_loss``, ``loss_gap`` (final minus minimal loss) and ``diverged``."""
        out = {}
        for m in SCALERS:
            r = dict(self.results[m])
            r.pop("path")
            r["X"] = np.asarray(self._scatter[m].get_offsets(), dtype=float)
            r["path"] = np.asarray(self._paths[m].get_xydata(), dtype=float)
            out[m] = r
        return out

    def __repr__(self) -> str:
        c = self.controls
        return (
            f"ScalingExplorer(lr={c['lr'].value:.3g}, steps={c['steps'].value}, "
            f"lr_mode={c['lr_mode'].value!r}, outliers={c['outliers'].value})"
        )
