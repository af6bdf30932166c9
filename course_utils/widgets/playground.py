"""NormalizationPlayground: which entries of an (N, C, H, W) tensor share a mean and variance.

Batch, layer, instance and group norm compute the same thing, (x - mean) / sqrt(var + eps),
and differ only in *which* entries one mean and variance are pooled over (Wu & He 2018,
"Group Normalization", Fig. 2):

- batch norm: one pair per channel, over N, H, W;
- layer norm: one pair per sample, over C, H, W;
- instance norm: one pair per sample and channel, over H, W;
- group norm: one pair per sample and group of C / G channels, over those channels, H, W.

The widget shows a small tensor as an N x C grid of H x W maps, highlights the entries that
share the selected entry's statistics, draws Wu & He's cube with the same set in blue, and
plots every group's mean and standard deviation. The pure functions :func:`stat_groups` and
:func:`normalize` are what it computes.
"""

from __future__ import annotations

import functools

import ipywidgets as W
import numpy as np
import torch
from matplotlib.patches import Polygon

from ..data import load_mnist
from ._base import CourseWidget, dropdown, int_slider, row, toggle
from ._display import GREY, OKABE_ITO, FigureView, grid_positions, pin_labels, style, style_axes

__all__ = ["NormalizationPlayground", "stat_groups", "normalize", "sample_tensor", "KINDS"]

KINDS = ("batch", "layer", "instance", "group")
SOURCES = ("feature maps", "images", "vectors")
_NAMES = {
    "batch": "Batch norm",
    "layer": "Layer norm",
    "instance": "Instance norm",
    "group": "Group norm",
}
_POOLED = {"batch": "N, H, W", "layer": "C, H, W", "instance": "H, W", "group": "C/G, H, W"}
_HIGHLIGHT = OKABE_ITO["orange"]
_CUBE_BLUE = OKABE_ITO["blue"]


def stat_groups(kind: str, shape: tuple[int, int, int, int], groups: int = 2) -> np.ndarray:
    """Which statistics group each entry of an (N, C, H, W) tensor belongs to.

    Args:
        kind: ``"batch"``, ``"layer"``, ``"instance"`` or ``"group"``.
        shape: (N, C, H, W).
        groups: G for group norm (must divide C).
    Returns:
        int array of ``shape``: entries with the same id share one mean and variance.
        Ids run over C (batch), N (layer), N*C (instance) or N*G (group) values.
        (:func:`course_utils.reference.stats.stat_groups`, the course's one definition.)
    """
    from ..reference import stats  # on first use: the grader's sandbox does not contain it

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return stats.stat_groups(kind, shape, groups)


def normalize(
    x: np.ndarray, kind: str, groups: int = 2, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalize ``x`` (N, C, H, W) the way ``kind`` does (no affine parameters).

    Returns:
        y: (N, C, H, W), (x - mean) / sqrt(var + eps) per statistics group, as
            ``torch.nn.functional.batch_norm`` (training), ``layer_norm``, ``instance_norm``
            and ``group_norm`` compute it (biased variance);
        ids: (N, C, H, W) group ids from :func:`stat_groups`;
        mean, var: (groups,) each group's statistics, in the order of the ids.
    """
    from ..reference import stats

    ids = stat_groups(kind, x.shape, groups)
    xhat, _, moments = stats.normalize(
        np.asarray(x, np.float64), stats.stat_layout(kind, x.shape, groups), eps
    )
    return xhat.reshape(x.shape), ids, moments.mean.ravel(), moments.var.ravel()


@functools.cache
def sample_tensor(source: str = "feature maps") -> np.ndarray:
    """A small, fixed tensor made from MNIST test digits, (N, C, H, W) float64.

    ``"feature maps"``: digits 0-3 through six fixed random 3x3 filters and 2x2 average
    pooling, each channel scaled and shifted differently, (4, 6, 14, 14);
    ``"images"``: digits 0-5 as they are, (6, 1, 28, 28);
    ``"vectors"``: digits 0-7 average-pooled to 4x4 = 16 features, (8, 16, 1, 1).
    """
    data = load_mnist(scale="unit", flatten=False)
    labels = data.y_test.numpy()
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(10)]
    if source == "feature maps":
        imgs = data.x_test[first[:4]]  # (4, 1, 28, 28)
        g = torch.Generator().manual_seed(6)
        weight = torch.randn(6, 1, 3, 3, generator=g)
        maps = torch.nn.functional.conv2d(imgs, weight, padding=1)
        maps = torch.nn.functional.avg_pool2d(maps, 2)  # (4, 6, 14, 14)
        # channels of different scale and offset, as real feature maps have
        scale = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25, 1.5]).view(1, 6, 1, 1)
        shift = torch.tensor([0.0, 1.0, -0.5, 2.0, 0.2, -1.0]).view(1, 6, 1, 1)
        return (maps * scale + shift).double().numpy()
    if source == "images":
        return data.x_test[first[:6]].double().numpy()
    if source == "vectors":
        pooled = torch.nn.functional.avg_pool2d(data.x_test[first[:8]], 7)  # (8, 1, 4, 4)
        return pooled.reshape(8, 16, 1, 1).double().numpy()
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def _mosaic(x: np.ndarray, gap: int) -> np.ndarray:
    """(N, C, H, W) -> one image with the H x W maps in N rows and C columns, NaN gaps."""
    n, c, h, w = x.shape
    out = np.full((n * (h + gap) - gap, c * (w + gap) - gap), np.nan)
    for i in range(n):
        for j in range(c):
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = x[i, j]
    return out


def _divisors(c: int) -> list[int]:
    return [g for g in range(1, c + 1) if c % g == 0]


class NormalizationPlayground(CourseWidget):
    """Pick a normalization and an entry; see which entries share its mean and variance.

    Args:
        kind: ``"batch"``, ``"layer"``, ``"instance"`` or ``"group"``.
        groups: G for group norm (a divisor of C).
        source: ``"feature maps"`` (4, 6, 14, 14), ``"images"`` (6, 1, 28, 28) or
            ``"vectors"`` (8, 16, 1, 1), see :func:`sample_tensor`.
        sample, channel: the selected entry (n, c).

    Drive it from Python with :meth:`set` (``pg.set(kind="group", groups=3)``);
    :meth:`plotted` returns what it shows.
    """

    eps = 1e-5

    def __init__(
        self,
        kind: str = "batch",
        groups: int = 2,
        source: str = "feature maps",
        sample: int = 0,
        channel: int = 0,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        super().__init__()
        # the source first: the others' ranges depend on its shape
        self.controls = {
            "source": dropdown("tensor", SOURCES, source, "220px"),
            "kind": toggle([(_NAMES[k].lower(), k) for k in KINDS], kind, "112px"),
            "groups": dropdown("groups G", [groups], groups, "150px"),
            "sample": int_slider("sample n", sample, 0, 1, width="230px"),
            "channel": int_slider("channel c", channel, 0, 1, width="230px"),
        }
        self.info = W.HTML()
        self.view = FigureView(self._layout)
        self._structure = None
        self._load(source, groups, sample, channel)
        self._build_figure()
        self.view.fit()
        c = self.controls
        self.widget = W.VBox(
            [
                row([c["kind"], c["groups"]]),
                row([c["source"], c["sample"], c["channel"]]),
                self.info,
                self.view.widget,
            ]
        )
        self.watch_controls()
        self._update()

    # -- state ---------------------------------------------------------------------------

    def _load(
        self, source: str, groups: int | None = None, sample: int = 0, channel: int = 0
    ) -> None:
        """Load a tensor and fit the sliders and the group choices to its shape."""
        self.x = sample_tensor(source)
        n, c = self.x.shape[:2]
        divs = _divisors(c)
        g = groups if groups in divs else min(divs, key=lambda d: abs(d - 2))
        ctl = self.controls
        with self.held():  # one update at the end, not one per control
            ctl["groups"].options = divs
            ctl["groups"].value = g
            ctl["sample"].max = n - 1
            ctl["sample"].value = min(sample, n - 1)
            ctl["channel"].max = c - 1
            ctl["channel"].value = min(channel, c - 1)

    def prepare(self, key: str) -> None:
        if key == "source":
            c = self.controls
            self._load(c["source"].value, c["groups"].value, c["sample"].value, c["channel"].value)
            self._rebuild_images()

    def apply(self, changed: set[str]) -> None:
        self._update()

    def _compute(self) -> dict:
        c = self.controls
        kind, g = c["kind"].value, c["groups"].value
        n, ch = c["sample"].value, c["channel"].value
        y, ids, mean, var = normalize(self.x, kind, g, self.eps)
        sel = int(ids[n, ch, 0, 0])
        return {
            "kind": kind,
            "groups": g,
            "n": n,
            "c": ch,
            "y": y,
            "ids": ids,
            "mean": mean,
            "var": var,
            "selected": sel,
            "mask": ids == sel,
        }

    # -- figure --------------------------------------------------------------------------

    def _layout(self, width: int) -> int:
        """Input, output and cube on top, the statistics below; margins in CSS pixels."""
        top_h = int(np.clip(0.36 * width, 220, 340))
        stats_h = int(np.clip(0.12 * width, 80, 120))
        top, bottom, hgap = 26, 50, 78
        height = top + top_h + hgap + stats_h + bottom
        cells = grid_positions(
            width, height, 2, 3, left=58, right=12, top=top, bottom=bottom, wgap=84, hgap=hgap,
            width_ratios=[1, 1, 1.05], height_ratios=[top_h, stats_h],
        )  # fmt: skip
        for ax, pos in zip((self.ax_in, self.ax_out, self.ax_cube), cells[0]):
            ax.set_position(pos)
        x0, y0, _, h = cells[1][0]
        x1, _, w1, _ = cells[1][2]
        self.ax_stats.set_position((x0, y0, x1 + w1 - x0, h))
        return height

    def _build_figure(self) -> None:
        fig = self.view.figure
        with style():
            self.ax_in = fig.add_axes((0, 0, 1, 1))
            self.ax_out = fig.add_axes((0, 0, 1, 1))
            self.ax_cube = fig.add_axes((0, 0, 1, 1))
            self.ax_stats = fig.add_axes((0, 0, 1, 1))
            style_axes(self.ax_stats)
            self._titles = {
                name: ax.set_title(" ", fontsize=10.5, y=1.01)
                for name, ax in [
                    ("in", self.ax_in),
                    ("out", self.ax_out),
                    ("cube", self.ax_cube),
                    ("stats", self.ax_stats),
                ]
            }
            self._build_cube()
            self.ax_stats.set_ylabel("value")
            self.ax_stats.axhline(0, color=GREY, lw=0.8)
        for ax in (self.ax_in, self.ax_out, self.ax_stats):
            pin_labels(ax, below=20, left=24)
        self.view.animate(self._titles.values(), cache=True)
        self._rebuild_images()

    def _rebuild_images(self) -> None:
        """(Re)create the mosaics for the current tensor's shape."""
        for artist in getattr(self, "_image_artists", []):
            artist.remove()
        self.view.forget(getattr(self, "_image_artists", []))
        n, c, h, w = self.x.shape
        self._gap = 0 if h == w == 1 else 1
        lo, hi = np.percentile(self.x, [1, 99])
        with style():
            self._im_in = self.ax_in.imshow(
                _mosaic(self.x, self._gap),
                cmap="cividis",
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            self._im_out = self.ax_out.imshow(
                _mosaic(self.x, self._gap),
                cmap="cividis",
                vmin=-2.5,
                vmax=2.5,
                interpolation="nearest",
            )
            self._shade = [
                ax.imshow(np.zeros((*self._im_in.get_array().shape, 4)), interpolation="nearest")
                for ax in (self.ax_in, self.ax_out)
            ]
            self._outline = [
                ax.plot([], [], color=_HIGHLIGHT, lw=1.6)[0] for ax in (self.ax_in, self.ax_out)
            ]
            self._marker = [
                ax.plot([], [], "o", ms=5, color=OKABE_ITO["vermillion"], mec="white", mew=0.8)[0]
                for ax in (self.ax_in, self.ax_out)
            ]
        step_h, step_w = h + self._gap, w + self._gap
        for ax in (self.ax_in, self.ax_out):
            ax.set_xticks(np.arange(c) * step_w + (w - 1) / 2, [str(j) for j in range(c)])
            ax.set_yticks(np.arange(n) * step_h + (h - 1) / 2, [str(i) for i in range(n)])
            ax.tick_params(length=0, labelsize=10)
            for side in ax.spines.values():
                side.set_visible(False)
            ax.set_xlabel(f"channel c (maps {h}×{w})" if h * w > 1 else "feature c")
            ax.set_ylabel("sample n")
        self._image_artists = [
            self._im_in,
            self._im_out,
            *self._shade,
            *self._outline,
            *self._marker,
        ]
        self.view.animate(self._image_artists)
        self.view.invalidate(self.ax_in, self.ax_out)

    # Wu & He's cube: N to the right, H x W up, C into the page (drawn as up-right)
    _DEPTH = np.array([0.45, 0.3])

    def _proj(self, n, c, h) -> np.ndarray:
        return np.stack([n + self._DEPTH[0] * c, h + self._DEPTH[1] * c], axis=-1)

    def _face(self, face: str, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
        u = np.array([u0, u1, u1, u0])
        v = np.array([v0, v0, v1, v1])
        if face == "front":  # c = 0: (n, h)
            return self._proj(u, 0 * u, v)
        if face == "top":  # h = 1: (n, c)
            return self._proj(u, v, 0 * u + 1)
        return self._proj(0 * u + 1, u, v)  # right, n = 1: (c, h)

    def _build_cube(self) -> None:
        ax = self.ax_cube
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_xlim(-0.2, 1.75)
        ax.set_ylim(-0.3, 1.45)
        # a light 'glass' cube; the selected block is drawn solid inside it
        for face in ("front", "top", "right"):
            ax.add_patch(
                Polygon(self._face(face, 0, 1, 0, 1), closed=True, fc="#f2f2f2", ec=GREY, lw=0.8)
            )
        self._cube_faces = {
            face: ax.add_patch(
                Polygon(np.zeros((4, 2)), closed=True, fc=_CUBE_BLUE, ec="white", lw=0.8)
            )
            for face in ("front", "top", "right")
        }
        (self._cube_grid,) = ax.plot([], [], color="white", lw=0.6)
        # the cube's far edges, over the block, so it reads as inside the cube
        back = [
            self._proj(0, 1, 0),
            self._proj(0, 1, 1),
            self._proj(1, 1, 1),
            self._proj(1, 1, 0),
            self._proj(0, 1, 0),
            [np.nan, np.nan],
            self._proj(0, 0, 0),
            self._proj(0, 1, 0),
        ]
        back = np.array(back)
        ax.plot(back[:, 0], back[:, 1], color=GREY, lw=0.6, ls=":")
        # Wu & He's single letters; the info line above the figure says what they are
        ax.text(0.5, -0.08, "N", ha="center", va="top", fontsize=11)
        ax.text(-0.06, 0.5, "H, W", ha="right", va="center", fontsize=11, rotation=90)
        mid = self._proj(1, 0.5, 0)
        ax.text(
            mid[0] + 0.05,
            mid[1] - 0.03,
            "C",
            ha="left",
            va="top",
            fontsize=11,
            rotation=np.degrees(np.arctan2(self._DEPTH[1], self._DEPTH[0])),
            rotation_mode="anchor",
        )
        self.view.animate([*self._cube_faces.values(), self._cube_grid])

    def _block(self, kind: str, n: int, c: int, groups: int) -> tuple[float, float, float, float]:
        """The selected set as a block of the unit cube: (n0, n1, c0, c1), all of H, W."""
        N, C = self.x.shape[:2]
        if kind == "batch":
            return 0.0, 1.0, c / C, (c + 1) / C
        if kind == "layer":
            return n / N, (n + 1) / N, 0.0, 1.0
        if kind == "instance":
            return n / N, (n + 1) / N, c / C, (c + 1) / C
        size = C // groups
        g0 = (c // size) * size
        return n / N, (n + 1) / N, g0 / C, (g0 + size) / C

    def _update_cube(self, kind: str, n: int, c: int, groups: int) -> None:
        N, C = self.x.shape[:2]
        n0, n1, c0, c1 = self._cube_box = self._block(kind, n, c, groups)
        f = self._cube_faces
        # the block's three visible faces: front (c = c0), top (h = 1), right (n = n1)
        f["front"].set_xy(self._proj(np.array([n0, n1, n1, n0]), c0, np.array([0, 0, 1, 1])))
        f["top"].set_xy(self._proj(np.array([n0, n1, n1, n0]), np.array([c0, c0, c1, c1]), 1))
        f["right"].set_xy(self._proj(n1, np.array([c0, c1, c1, c0]), np.array([0, 0, 1, 1])))
        # one cell per sample and channel inside the block, as in Wu & He's figure
        segs = []
        for k in range(N + 1):
            t = k / N
            if n0 < t < n1:
                segs += [
                    self._proj(t, c0, 0),
                    self._proj(t, c0, 1),
                    self._proj(t, c1, 1),
                    [np.nan, np.nan],
                ]
        for k in range(C + 1):
            t = k / C
            if c0 < t < c1:
                segs += [
                    self._proj(n0, t, 1),
                    self._proj(n1, t, 1),
                    self._proj(n1, t, 0),
                    [np.nan, np.nan],
                ]
        pts = np.array(segs) if segs else np.empty((0, 2))
        self._cube_grid.set_data(pts[:, 0], pts[:, 1])

    def _update(self) -> None:
        r = self._compute()
        kind, n, c, g = r["kind"], r["n"], r["c"], r["groups"]
        # the bar chart's ticks and label depend on these: render its axes again, the rest
        # of the figure keeps its background
        structure = (kind, g, self.controls["source"].value)
        if structure != self._structure:
            self.view.invalidate(self.ax_stats)
        self._structure = structure
        N, C, H, Wd = self.x.shape
        self.controls["groups"].disabled = kind != "group"
        self._im_out.set_data(_mosaic(r["y"], self._gap))
        tile = r["mask"][:, :, 0, 0]  # (N, C): which maps are in the selected group
        shade = np.zeros((*self._im_in.get_array().shape, 4))
        dim = _mosaic(
            np.broadcast_to(~tile[:, :, None, None], self.x.shape).astype(float), self._gap
        )
        shade[..., :3] = 1.0
        shade[..., 3] = np.where(dim == 1.0, 0.78, 0.0)
        for s in self._shade:
            s.set_data(shade)
        xs, ys = self._outline_path(tile)
        for line in self._outline:
            line.set_data(xs, ys)
        step_h, step_w = H + self._gap, Wd + self._gap
        for m in self._marker:
            m.set_data([c * step_w + (Wd - 1) / 2], [n * step_h + (H - 1) / 2])
        self._update_cube(kind, n, c, g)
        self._update_stats(r)
        name = _NAMES[kind] + (f" (G={g})" if kind == "group" else "")
        pooled = int(r["mask"].sum())
        t = self._titles
        t["in"].set_text(f"Input x {tuple(self.x.shape)}")
        t["out"].set_text(f"{name} output")
        t["cube"].set_text(f"pools {_POOLED[kind]}")
        mu, var = r["mean"][r["selected"]], r["var"][r["selected"]]
        self.info.value = (
            f"<b>{name}</b> computes <b>{len(r['mean'])}</b> means and variances for this "
            f"{N}&times;{C}&times;{H}&times;{Wd} tensor, each over <b>{pooled}</b> values "
            f"({_POOLED[kind]}). The selected entry (sample {n}, channel {c}) shares "
            f"&mu; = {mu:.3f}, &sigma;&sup2; = {var:.3f} with the orange maps; after "
            "normalizing, each set has mean 0 and std 1."
            + (
                " <i>Each vector entry is its own group here, so the output is all zeros: "
                "instance norm needs H&times;W &gt; 1.</i>"
                if kind == "instance" and H * Wd == 1
                else ""
            )
        )
        self._last = r
        self.view.redraw()

    def _outline_path(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A polyline (NaN-separated) around each highlighted map."""
        N, C, H, Wd = self.x.shape
        step_h, step_w = H + self._gap, Wd + self._gap
        xs, ys = [], []
        for i, j in zip(*np.nonzero(tile)):
            x0, y0 = j * step_w - 0.5, i * step_h - 0.5
            xs += [x0, x0 + Wd, x0 + Wd, x0, x0, np.nan]
            ys += [y0, y0, y0 + H, y0 + H, y0, np.nan]
        return np.array(xs), np.array(ys)

    def _update_stats(self, r: dict) -> None:
        ax = self.ax_stats
        mean, std = r["mean"], np.sqrt(r["var"])
        k = np.arange(len(mean))
        colors = [_HIGHLIGHT if i == r["selected"] else OKABE_ITO["blue"] for i in k]
        if len(getattr(self, "_bars", [])) == len(mean):  # same groups: update in place
            for bar, height, color in zip(self._bars, mean, colors):
                bar.set_height(height)
                bar.set_color(color)
            self._std_marks.set_data(k, std)
        else:
            for artist in getattr(self, "_stat_artists", []):
                artist.remove()
            self.view.forget(getattr(self, "_stat_artists", []))
            with style():
                bars = ax.bar(k, mean, color=colors, width=0.7)
                (dots,) = ax.plot(k, std, "_", color="black", ms=10, mew=2)
            self._stat_artists = [*bars, dots]
            self._bars, self._std_marks = list(bars), dots
            self.view.animate(self._stat_artists)
        ax.set_xlim(-0.6, max(len(mean), 6) - 0.4)
        ticks = k if len(k) <= 24 else k[:: int(np.ceil(len(k) / 24))]
        ax.set_xticks(ticks)
        lo = min(0.0, float(mean.min()))
        hi = max(float(mean.max()), float(std.max()))
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.15 * (hi - lo))
        what = {
            "batch": "channel",
            "layer": "sample",
            "instance": "(sample, channel)",
            "group": "(sample, group)",
        }
        ax.set_xlabel(f"statistics group: one per {what[r['kind']]}")
        self._titles["stats"].set_text(
            f"{len(mean)} groups: mean (bars), std (black ticks), selected in orange"
        )

    # -- what it shows -------------------------------------------------------------------

    def plotted(self) -> dict:
        """What the figure shows now.

        Returns a dict: ``x`` (N, C, H, W) input; ``y`` (N, C, H, W) normalized output;
        ``group_id`` (N, C, H, W); ``mask`` (N, C, H, W) bool, the entries that share the
        selected entry's statistics; ``n_shared`` their number; ``mean``, ``std`` (G,) per
        group, read back from the bar chart; ``selected`` the selected group's id;
        ``dimmed`` (N, C) bool, maps shaded out in the mosaics (read from the overlay);
        ``cube`` (n0, n1, c0, c1): the blue box in the cube, as fractions of N and C.
        """
        r = self._last
        N, C, H, Wd = self.x.shape
        alpha = self._shade[0].get_array()[..., 3]
        step_h, step_w = H + self._gap, Wd + self._gap
        dimmed = np.array([[alpha[i * step_h, j * step_w] > 0 for j in range(C)] for i in range(N)])
        return {
            "x": self.x,
            "y": r["y"],
            "group_id": r["ids"],
            "mask": r["mask"],
            "n_shared": int(r["mask"].sum()),
            "mean": np.array([b.get_height() for b in self._bars]),
            "std": np.asarray(self._std_marks.get_ydata(), dtype=float),
            "selected": r["selected"],
            "dimmed": dimmed,
            "cube": self._cube_box,
            "output_image": np.asarray(self._im_out.get_array(), dtype=float),
        }

    def __repr__(self) -> str:
        c = self.controls
        return (
            f"NormalizationPlayground(kind={c['kind'].value!r}, groups={c['groups'].value}, "
            f"source={c['source'].value!r}, sample={c['sample'].value}, "
            f"channel={c['channel'].value})"
        )
