"""ScalingExplorer: gradient descent on a badly scaled 2-D regression, four ways of scaling.

The data (:func:`course_utils.data.badly_scaled_2d`) has two features whose standard
deviations differ 100-fold. Each column of the widget scales them one way (none, min-max,
standardization, robust: median and interquartile range), shows the scaled data, and runs
plain gradient descent from w = 0 on the least-squares loss, drawn over its contours. The
learning rate is shared (or set to each problem's own 1/L), so the panels show why a
badly conditioned problem, condition number kappa = L / mu of the loss's Hessian, forces
a small step and then crawls along the valley.

The loss keeps an intercept, solved exactly, so the picture stays 2-D:
L(w) = 1/2 mean((Xc w - yc)^2) with Xc, yc centred. Its Hessian is the covariance of the
scaled features, H = Xc^T Xc / n.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np

from ..data import badly_scaled_2d
from ._display import GREY, OKABE_ITO, FigureView, mimebundle, style, style_axes

__all__ = ["ScalingExplorer", "SCALERS", "scale_features", "quadratic", "gd_path"]

SCALERS = ("raw", "min-max", "standardized", "robust")
_COLORS = dict(
    zip(
        SCALERS,
        (OKABE_ITO["vermillion"], OKABE_ITO["orange"], OKABE_ITO["blue"], OKABE_ITO["green"]),
    )
)
_LR_MODES = [("same learning rate", "same"), ("each its own 1/L", "tuned")]


def scale_features(X: np.ndarray, method: str) -> np.ndarray:
    """Scale each column of ``X`` (n, d) by ``method``; returns (n, d).

    ``raw``: unchanged; ``min-max``: to [0, 1]; ``standardized``: zero mean, unit std;
    ``robust``: minus the median, divided by the interquartile range.
    """
    if method == "raw":
        return X.copy()
    if method == "min-max":
        lo, hi = X.min(0), X.max(0)
        return (X - lo) / (hi - lo)
    if method == "standardized":
        return (X - X.mean(0)) / X.std(0)
    if method == "robust":
        q1, med, q3 = np.percentile(X, [25, 50, 75], axis=0)
        return (X - med) / (q3 - q1)
    raise ValueError(f"method must be one of {SCALERS}, got {method!r}")


def quadratic(Xs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The least-squares loss of (Xs, y) with its intercept solved exactly, as a quadratic:
    L(w) = 1/2 w^T H w - g^T w + c.

    Returns:
        H (d, d) = Xc^T Xc / n, g (d,) = Xc^T yc / n, c = mean(yc^2) / 2.
    """
    xc = Xs - Xs.mean(0)
    yc = y - y.mean()
    n = len(y)
    return xc.T @ xc / n, xc.T @ yc / n, float(yc @ yc / (2 * n))


def _loss(H: np.ndarray, g: np.ndarray, c: float, w: np.ndarray) -> np.ndarray:
    """L at points w (..., d)."""
    return 0.5 * np.einsum("...i,ij,...j->...", w, H, w) - w @ g + c


def gd_path(H: np.ndarray, g: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """Gradient descent w <- w - lr (H w - g) from w = 0; returns (steps + 1, d).

    Iterates that overflow are left as inf / NaN (divergence)."""
    w = np.zeros((steps + 1, len(g)))
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps):
            w[k + 1] = w[k] - lr * (H @ w[k] - g)
    return w


class ScalingExplorer:
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
        self._data_args = (n, scales, seed)
        wide = {"description_width": "initial"}
        self.controls = {
            "lr": W.FloatLogSlider(
                value=lr,
                base=10,
                min=-5,
                max=1,
                step=0.1,
                description="learning rate",
                readout_format=".2g",
                style=wide,
                layout=W.Layout(width="340px"),
            ),
            "steps": W.IntSlider(value=steps, min=1, max=200, description="steps", style=wide),
            "lr_mode": W.ToggleButtons(
                options=_LR_MODES, value=lr_mode, style={"button_width": "175px"}
            ),
            "outliers": W.Checkbox(
                value=outliers, description="add outliers to feature 1", indent=False
            ),
        }
        self.view = FigureView((11.6, 5.9), dpi=80)
        self._make_problems()
        self._build_figure()
        self._build_data_artists()
        for key, ctl in self.controls.items():
            ctl.observe(self._on_data if key == "outliers" else self._on_change, names="value")
        self.widget = W.VBox(
            [
                W.HBox([self.controls["lr"], self.controls["steps"]]),
                W.HBox([self.controls["lr_mode"], self.controls["outliers"]]),
                self.view.widget,
            ]
        )
        self._busy = False
        self._update(full=True)

    # -- the problems --------------------------------------------------------------------

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
            H, g, c = quadratic(Xs, y)
            eig = np.linalg.eigvalsh(H)
            w_star = np.linalg.solve(H, g)
            self.problems[m] = {
                "X": Xs,
                "H": H,
                "g": g,
                "c": c,
                "L": float(eig[-1]),
                "mu": float(eig[0]),
                "w_star": w_star,
                "loss_star": float(_loss(H, g, c, w_star)),
            }

    def _window(self, p: dict) -> tuple[float, float, float, float]:
        """A square window around the start (0, 0) and the minimum, with a margin."""
        pts = np.array([[0.0, 0.0], p["w_star"]])
        centre = pts.mean(0)
        half = 0.75 * max(np.abs(pts - centre).max(), 1e-3) + 0.15 * max(
            np.abs(p["w_star"]).max(), 1e-3
        )
        return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half

    # -- figure --------------------------------------------------------------------------

    def _build_figure(self) -> None:
        fig = self.view.figure
        with style():
            axes = fig.subplots(2, 4)
            fig.subplots_adjust(
                left=0.06, right=0.985, top=0.9, bottom=0.09, wspace=0.42, hspace=0.42
            )
        self.ax_data = dict(zip(SCALERS, axes[0]))
        self.ax_loss = dict(zip(SCALERS, axes[1]))
        self._titles = {}
        self._paths = {}
        self._ends = {}
        for m in SCALERS:
            for ax in (self.ax_data[m], self.ax_loss[m]):
                style_axes(ax)
                ax.set_aspect("equal", adjustable="box")
            self.ax_data[m].set_xlabel("feature 1 (scaled)")
            self.ax_data[m].set_ylabel("feature 2 (scaled)")
            self.ax_loss[m].set_xlabel("weight w1")
            self.ax_loss[m].set_ylabel("weight w2")
            with style():
                self.ax_data[m].set_title(
                    m, fontsize=11, fontweight="bold", color=_COLORS[m], y=1.08
                )
                self._titles[m] = self.ax_loss[m].set_title(" ", fontsize=9, y=1.02)
                (self._paths[m],) = self.ax_loss[m].plot(
                    [], [], ".-", color=_COLORS[m], lw=1.3, ms=4
                )
                (self._ends[m],) = self.ax_loss[m].plot([], [], "*", color="black", ms=10)
                self.ax_loss[m].plot([0], [0], "o", color=GREY, ms=5)
        self.view.animate([*self._paths.values(), *self._ends.values()])
        self.view.animate(self._titles.values(), cache=True)

    def _build_data_artists(self) -> None:
        """Scatter plots and loss contours for the current data (static until it changes)."""
        for artist in getattr(self, "_static", []):
            artist.remove()
        self._static, self._scatter, self._data_titles = [], {}, {}
        for m in SCALERS:
            p = self.problems[m]
            ax = self.ax_data[m]
            Xs = p["X"]
            with style():
                self._scatter[m] = ax.scatter(
                    Xs[:, 0], Xs[:, 1], s=6, color=_COLORS[m], alpha=0.6, lw=0
                )
                lim = 1.05 * np.abs(Xs).max()
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
                sd = Xs.std(0)
                self._data_titles[m] = ax.text(
                    0.5,
                    1.01,
                    f"std {sd[0]:.2g} and {sd[1]:.2g}",
                    transform=ax.transAxes,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color=GREY,
                )
                x0, x1, y0, y1 = self._window(p)
                gx, gy = np.meshgrid(np.linspace(x0, x1, 121), np.linspace(y0, y1, 121))
                z = _loss(p["H"], p["g"], p["c"], np.stack([gx, gy], -1))
                start = float(_loss(p["H"], p["g"], p["c"], np.zeros(2)))
                levels = p["loss_star"] + (start - p["loss_star"]) * np.geomspace(1e-3, 4, 10)
                cs = self.ax_loss[m].contour(gx, gy, z, levels=levels, colors=GREY, linewidths=0.7)
                self.ax_loss[m].set_xlim(x0, x1)
                self.ax_loss[m].set_ylim(y0, y1)
                (opt,) = self.ax_loss[m].plot(*p["w_star"], "x", color="black", ms=7, mew=1.5)
            self._static += [self._scatter[m], self._data_titles[m], cs, opt]

    def _on_data(self, change) -> None:
        self._make_problems()
        self._build_data_artists()
        self._update(full=True)

    def _on_change(self, change) -> None:
        if not self._busy:
            self._update()

    def set(self, **values) -> None:
        """Set several controls at once (``lr``, ``steps``, ``lr_mode``, ``outliers``) and
        redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(
                f"unknown controls {sorted(unknown)}; choose from {sorted(self.controls)}"
            )
        data = "outliers" in values and values["outliers"] != self.controls["outliers"].value
        self._busy = True
        try:
            for k, v in values.items():
                if k == "outliers":
                    self.controls[k].unobserve(self._on_data, names="value")
                    self.controls[k].value = v
                    self.controls[k].observe(self._on_data, names="value")
                else:
                    self.controls[k].value = v
        finally:
            self._busy = False
        if data:
            self._make_problems()
            self._build_data_artists()
        self._update(full=data)

    def _update(self, full: bool = False) -> None:
        c = self.controls
        steps, mode = c["steps"].value, c["lr_mode"].value
        self.results = {}
        for m in SCALERS:
            p = self.problems[m]
            lr = c["lr"].value if mode == "same" else 1.0 / p["L"]
            path = gd_path(p["H"], p["g"], lr, steps)
            final = float(_loss(p["H"], p["g"], p["c"], path[-1]))
            diverged = not np.isfinite(final) or lr >= 2.0 / p["L"]
            shown = self._clip(path, self._window(p))
            self._paths[m].set_data(shown[:, 0], shown[:, 1])
            self._ends[m].set_data(shown[-1:, 0], shown[-1:, 1])
            kappa = p["L"] / p["mu"]
            gap = final - p["loss_star"]
            if diverged:
                verdict = f"diverges: lr {lr:.2g} > 2/L = {2 / p['L']:.2g}"
            elif gap < 1e-9:
                verdict = f"at the minimum after {steps} steps"
            else:
                verdict = f"loss gap {gap:.1e} after {steps} steps"
            self._titles[m].set_text(f"κ = {kappa:.3g}, lr = {lr:.2g}\n{verdict}")
            self.results[m] = {
                "lr": lr,
                "kappa": kappa,
                "max_stable_lr": 2.0 / p["L"],
                "path": path,
                "final_loss": final,
                "loss_gap": gap,
                "diverged": diverged,
            }
        self.view.redraw(full)

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

    # -- what it shows -------------------------------------------------------------------

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

    def close(self) -> None:
        """Close the widgets."""
        self.view.close()
        self.widget.close()

    def __repr__(self) -> str:
        c = self.controls
        return (
            f"ScalingExplorer(lr={c['lr'].value:.3g}, steps={c['steps'].value}, "
            f"lr_mode={c['lr_mode'].value!r}, outliers={c['outliers'].value})"
        )

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return mimebundle(self.widget, self.view, repr(self))
