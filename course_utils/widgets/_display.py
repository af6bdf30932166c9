"""A matplotlib figure that lives in a widget, fits its output area and redraws fast.

:class:`FigureView` owns one :class:`matplotlib.figure.Figure` that never touches pyplot (no
global registry, no second copy printed by ``%matplotlib inline``). It renders with Agg in
the kernel and sends frames to a :class:`~course_utils.widgets._canvas.FrameCanvas`, which
reports the width of the output area: the figure is laid out again for that width, so it
never needs horizontal scrolling.

Redrawing is layered, because rendering text and ticks is the dearest part of a frame:

- artists passed to :meth:`FigureView.animate` (data, titles) are drawn at every frame over
  a saved background (blitting);
- the background is kept per group of overlapping axes: when one group's limits, scales or
  ticks change (or :meth:`FigureView.invalidate` says so), only that group is rendered
  again, not the whole figure;
- frames while training (``redraw(live=True)``) are rendered at one pixel per CSS pixel even
  on HiDPI screens, and skipped while the page is two frames behind; the frame after
  training is rendered at the screen's full resolution.

Static fallback: :func:`mimebundle` adds a PNG of the figure to a widget's display data, so
frontends that cannot run widgets (nbconvert's HTML, GitHub, a saved notebook opened without
its kernel) show the picture, while JupyterLab picks the live widget.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable

import ipywidgets as W
import matplotlib as mpl
import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox, offset_copy

from ._canvas import FrameCanvas

__all__ = [
    "OKABE_ITO",
    "GREY",
    "CSS_DPI",
    "layer_colors",
    "FigureView",
    "mimebundle",
    "style",
    "style_axes",
    "encode_png",
    "grid_positions",
    "pin_labels",
]

# Okabe & Ito's colour-blind-safe palette, in their order (black last)
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
GREY = "#8c8c8c"
# CSS pixels per inch: with it a matplotlib point is a CSS point (10 pt = 13.3 px)
CSS_DPI = 96

_RC = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def layer_colors(n: int) -> list[str]:
    """``n`` colours from the colour-blind-safe, perceptually ordered 'viridis' map, first
    layer darkest, so depth reads as a gradient."""
    cmap = mpl.colormaps["viridis"]
    if n == 1:
        return [to_hex(cmap(0.0))]
    # stop before viridis' light yellow, which is hard to see on white
    return [to_hex(cmap(0.82 * i / (n - 1))) for i in range(n)]


def style():
    """Context manager with the widgets' font sizes; build axes and texts inside it."""
    return mpl.rc_context(_RC)


def style_axes(ax) -> None:
    """The course's axes style: light grid behind the data, no top/right spines, and tick
    sizes fixed on the axes (ticks made later, at draw time, would read the global rc)."""
    ax.tick_params(labelsize=_RC["xtick.labelsize"])
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def pin_labels(ax, below: float = 22.0, left: float = 30.0, right: float | None = None) -> None:
    """Put the axis labels at fixed distances (points) from the axes instead of measuring
    every tick label at every render to find them (a third of the cost of drawing an axes):
    the x label's top ``below`` points under the axes, the y label's right side ``left``
    points left of it (``right``: a y label on the right, as a twin axes has)."""
    fig = ax.get_figure(root=True)
    ax.xaxis.set_label_coords(0.5, 0.0, offset_copy(ax.transAxes, fig, y=-below, units="points"))
    if right is None:
        ax.yaxis.set_label_coords(0.0, 0.5, offset_copy(ax.transAxes, fig, x=-left, units="points"))
    else:
        ax.yaxis.set_label_coords(1.0, 0.5, offset_copy(ax.transAxes, fig, x=right, units="points"))


def encode_png(rgba: np.ndarray, level: int = 1) -> bytes:
    """An opaque (H, W, 4) uint8 image as an RGB PNG, without PNG's per-row filter search.

    Pillow tries five filters on every row, which costs three times the compression itself
    for a figure; plain rows and zlib level 1 give a frame of ~100-250 kB, which a local
    browser decodes in a few milliseconds.
    """
    h, w, _ = rgba.shape
    rows = np.empty((h, 3 * w + 1), np.uint8)
    rows[:, 0] = 0  # filter type 'None'
    rows[:, 1:].reshape(h, w, 3)[:] = rgba[:, :, :3]

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            chunk(b"IEND", b""),
        ]
    )


class _Group:
    """Axes that overlap on the figure (a plot and its twin, colour bar, alternative view):
    their background is rendered together."""

    def __init__(self, axes: list):
        self.axes = axes
        self.dirty = False

    def key(self) -> tuple:
        # what the group's background depends on, besides what invalidate() reports
        return tuple(
            (False,)  # a hidden axes adds nothing; shown again, its key changes
            if not ax.get_visible()
            else (
                True,
                ax.get_xlim(),
                ax.get_ylim(),
                ax.get_xscale(),
                ax.get_yscale(),
                tuple(ax.get_position().bounds),
            )
            for ax in self.axes
        )

    def extent(self) -> Bbox:
        """The union of the group's axes rectangles (display pixels)."""
        return Bbox.union([ax.get_window_extent() for ax in self.axes])


class _Layer:
    """The saved background at one resolution, and what it was rendered from."""

    def __init__(self):
        self.background = None
        self.keys: dict[int, tuple] = {}
        self.sprites: dict[int, tuple] = {}


def _regions(groups: list[_Group], width: float, height: float, scale: float) -> dict[int, Bbox]:
    """Split the figure into one rectangle per group (display pixels), each holding its
    axes and the margins its labels use: the gap between two columns goes to the right one
    (its y labels) but for a strip of ``_OVERHANG`` pixels (the left one's last x tick
    label), the gap between two rows to the upper one (its x labels) but for a strip of
    ``_OVERHANG`` pixels. Titles are animated, drawn at every frame, so need no room."""
    boxes = {id(g): g.extent() for g in groups}
    overhang = _OVERHANG * scale
    out = {}
    for g in groups:
        b = boxes[id(g)]
        x0, x1, y0, y1 = 0.0, width, 0.0, height
        for h in groups:
            o = boxes[id(h)]
            if h is g:
                continue
            beside = o.y0 < b.y1 and b.y0 < o.y1
            above_below = o.x0 < b.x1 and b.x0 < o.x1
            if beside and o.x1 <= b.x0:  # h on the left
                x0 = max(x0, min(o.x1 + overhang, (o.x1 + b.x0) / 2))
            if beside and o.x0 >= b.x1:  # h on the right
                x1 = min(x1, min(b.x1 + overhang, (b.x1 + o.x0) / 2))
            if above_below and o.y1 <= b.y0:  # h below
                y0 = max(y0, min(o.y1 + overhang, (o.y1 + b.y0) / 2))
            if above_below and o.y0 >= b.y1:  # h above
                y1 = min(y1, min(b.y1 + overhang, (b.y1 + o.y0) / 2))
        out[id(g)] = Bbox.from_extents(x0, y0, x1, y1)
    return out


_OVERHANG = 22  # display pixels at scale 1


class FigureView:
    """A figure shown as a live widget that fits its output area.

    Args:
        layout: ``layout(width) -> height`` places the axes for a figure ``width`` CSS pixels
            wide and returns the height it needs (CSS pixels); called again whenever the
            output area's width changes.
        width: the width to lay out for before a page reports its room.
        max_width: never wider than this (CSS pixels), however wide the output area.
    Attributes:
        figure: the :class:`~matplotlib.figure.Figure` (draw on it with its own methods).
        widget: the ipywidgets element to put in a layout.
        full_draws, partial_draws: how many renders drew the whole figure or only some
            groups' backgrounds (for tests and benchmarks).
    """

    min_width = 640
    live_scale = 1.0  # pixels per CSS pixel of frames while training

    def __init__(self, layout: Callable[[int], int], width: int = 840, max_width: int = 1100):
        self.figure = Figure(dpi=CSS_DPI, facecolor="white", edgecolor="white")
        FigureCanvasAgg(self.figure)
        self._layout = layout
        self.max_width = max_width
        self._animated: list[Artist] = []
        self._texts: list[Artist] = []  # animated texts whose pixels are cached
        self._groups: list[_Group] | None = None
        self._layers: dict[float, _Layer] = {}
        self.scale = 1.0
        self.full_draws = 0
        self.partial_draws = 0
        self.frames_skipped = 0
        self._fitted_width = 0
        self.default_width = width
        try:
            self.widget = FrameCanvas()
        except Exception:  # pragma: no cover - anywidget is a course requirement
            self.widget = W.Image(format="png")
            self._canvas = None
        else:
            self._canvas = self.widget
            self.widget.observe(self._on_room, names=["room", "ratio"])
            self.widget.on_hello(lambda: self.redraw(full=True))

    # -- size --------------------------------------------------------------------------------

    @property
    def css_size(self) -> tuple[int, int]:
        w, h = self.figure.get_size_inches() * CSS_DPI
        return round(w), round(h)

    def fit(self, width: int | None = None) -> None:
        """Lay the figure out for ``width`` CSS pixels (clamped to [min_width, max_width];
        default: the width it has, else ``width`` as constructed). Call it once the axes
        exist."""
        width = width or self._fitted_width or self.default_width
        width = int(min(max(width, self.min_width), self.max_width))
        height = int(self._layout(width))
        self.figure.set_size_inches(width / CSS_DPI, height / CSS_DPI)
        self._fitted_width = width
        self._groups = None  # positions changed: overlaps may too
        self._regions_key = None
        self._layers.clear()
        if self._canvas is not None:
            self._canvas.size = (width, height)

    def _on_room(self, change) -> None:
        room = self._canvas.room
        if room <= 0:
            return
        target = int(min(max(room - 2, self.min_width), self.max_width))
        if target != self._fitted_width:
            self.fit(target)
        self._layers.clear()  # the device pixel ratio may have changed
        self.redraw(full=True)

    # -- what changes ------------------------------------------------------------------------

    def animate(self, artists, cache: bool = False) -> None:
        """Mark artists as changing often: they are drawn over the saved background.

        ``cache=True`` is for texts outside the axes (titles): their pixels are kept and
        put back as they are while the text does not change, because rendering glyphs is
        the dearest part of a frame. Texts inside axes must not be cached (the data drawn
        under them changes).
        """
        for a in artists:
            a.set_animated(True)
            (self._texts if cache else self._animated).append(a)

    def forget(self, artists) -> None:
        """Stop tracking artists (call before removing them from the figure)."""
        gone = {id(a) for a in artists}
        self._animated = [a for a in self._animated if id(a) not in gone]
        self._texts = [a for a in self._texts if id(a) not in gone]

    def invalidate(self, *axes) -> None:
        """The backgrounds of these axes changed in a way limits do not show (ticks, labels,
        legends, static artists): render their groups again at the next redraw."""
        wanted = {id(ax) for ax in axes}
        for g in self.groups:
            if any(id(ax) in wanted for ax in g.axes):
                g.dirty = True

    @property
    def groups(self) -> list[_Group]:
        """The figure's axes, grouped where their rectangles overlap."""
        if self._groups is None:
            axes = list(self.figure.axes)
            boxes = [ax.get_position() for ax in axes]
            parent = list(range(len(axes)))

            def root(i):
                while parent[i] != i:
                    i = parent[i]
                return i

            for i in range(len(axes)):
                for j in range(i):
                    if boxes[i].overlaps(boxes[j]):
                        parent[root(i)] = root(j)
            members: dict[int, list] = {}
            for i, ax in enumerate(axes):
                members.setdefault(root(i), []).append(ax)
            self._groups = [_Group(m) for m in members.values()]
        return self._groups

    # -- rendering ---------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """True while a page shows the canvas (it said hello)."""
        return self._canvas is not None and self._canvas.live

    def _set_scale(self, scale: float) -> None:
        if scale != self.scale:
            self.scale = scale
            self.figure._set_dpi(CSS_DPI * scale, forward=False)

    def render(self, full: bool = False, scale: float = 1.0) -> None:
        """Render the current state into the canvas' pixel buffer at ``scale`` pixels per
        CSS pixel: the animated artists over the saved background, after rendering again the
        groups whose background changed (everything if ``full`` or nothing is saved)."""
        self._set_scale(scale)
        canvas = self.figure.canvas
        layer = self._layers.setdefault(scale, _Layer())
        stale = []
        if full or layer.background is None:
            canvas.draw()  # the whole figure; animated artists are skipped
            self.full_draws += 1
            for g in self.groups:
                layer.keys[id(g)] = g.key()
                g.dirty = False
            layer.sprites.clear()
        else:
            renderer = canvas.get_renderer()
            canvas.restore_region(layer.background)
            stale = [g for g in self.groups if g.dirty or layer.keys.get(id(g)) != g.key()]
            if stale:
                self.partial_draws += 1
                pixels = np.asarray(renderer.buffer_rgba())
                height = pixels.shape[0]
                regions = self.regions()
                for g in stale:
                    # blank the group's rectangle, then draw its axes (not their animated
                    # artists) into it
                    x0, y0, x1, y1 = regions[id(g)].extents
                    pixels[int(round(height - y1)) : int(round(height - y0)),
                           int(round(x0)) : int(round(x1))] = 255  # fmt: skip
                    for ax in g.axes:
                        ax.draw(renderer)
                    layer.keys[id(g)] = g.key()
                    g.dirty = False
                    # cached text pixels over this region hold the old background
                    for k, sprite in list(layer.sprites.items()):
                        if sprite[2].overlaps(regions[id(g)]):
                            del layer.sprites[k]
        if full or stale or layer.background is None:
            layer.background = canvas.copy_from_bbox(self.figure.bbox)
        self._draw_animated(layer)

    @staticmethod
    def _shown(a: Artist) -> bool:
        return a.get_visible() and (a.axes is None or a.axes.get_visible())

    def _draw_animated(self, layer: _Layer) -> None:
        canvas = self.figure.canvas
        for a in self._animated:
            if self._shown(a):
                (a.axes or self.figure).draw_artist(a)
        for t in self._texts:
            key = (t.get_text(), self._shown(t))
            cached = layer.sprites.get(id(t))
            if cached is not None and cached[0] == key:
                canvas.restore_region(cached[1])  # the same pixels as last frame
                continue
            if key[1] and key[0]:
                (t.axes or self.figure).draw_artist(t)
                box = t.get_window_extent(canvas.get_renderer()).padded(2)
                layer.sprites[id(t)] = (key, canvas.copy_from_bbox(box), box)
            else:
                layer.sprites.pop(id(t), None)

    def redraw(self, full: bool = False, live: bool = False) -> None:
        """Show the figure's current state on the page (nothing to do while none shows it).

        ``live=True`` marks a frame while training: rendered at :attr:`live_scale` pixels
        per CSS pixel and skipped while the page is two or more frames behind (the next
        frame shows the newer state anyway). Other frames use the screen's full resolution.
        """
        if self._canvas is None:
            self.widget.value = self.png()
            return
        if not self.live:
            return
        c = self._canvas
        if live and c.behind >= 2:
            self.frames_skipped += 1
            return
        ratio = max(1.0, float(c.ratio))
        scale = min(ratio, self.live_scale) if live else ratio
        self.render(full, scale)
        c.show_frame(self.frame(), self.css_size)

    def frame(self) -> bytes:
        """The canvas' pixels as sent to the page (PNG)."""
        return encode_png(np.asarray(self.figure.canvas.get_renderer().buffer_rgba()))

    def png(self) -> bytes:
        """The figure as PNG bytes, one pixel per CSS pixel (the static fallback)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=CSS_DPI)
        self._set_scale(self.scale)  # savefig restores the dpi it found
        return buf.getvalue()

    def regions(self) -> dict[int, Bbox]:
        """The rectangle (display pixels) each group's background is rendered into, by
        ``id`` of the group: a partition of the figure (see :func:`_regions`)."""
        width, height = self.figure.bbox.size
        key = (width, height, self.scale)
        if getattr(self, "_regions_key", None) != key:
            self._regions_cache = _regions(self.groups, width, height, self.scale)
            self._regions_key = key
        return self._regions_cache

    def spills(self) -> list[tuple[list, Bbox, Bbox]]:
        """Groups whose static drawing reaches outside their region (a layout error: it
        would leave stale pixels when the group is rendered again): (axes, drawn box,
        region) for each. Animated artists are left out (they are drawn at every frame)."""
        renderer = self.figure.canvas.get_renderer()
        animated = [*self._animated, *self._texts]
        out = []
        regions = self.regions()
        for g in self.groups:
            mine = {id(ax) for ax in g.axes}
            hidden = [a for a in animated if a.axes is not None and id(a.axes) in mine]
            shown = [a.get_visible() for a in hidden]
            for a in hidden:
                a.set_visible(False)
            try:
                boxes = [ax.get_tightbbox(renderer) for ax in g.axes if ax.get_visible()]
            finally:
                for a, v in zip(hidden, shown):
                    a.set_visible(v)
            boxes = [b for b in boxes if b is not None]
            if not boxes:
                continue
            drawn, region = Bbox.union(boxes), regions[id(g)]
            if (
                drawn.x0 < region.x0 - 0.5
                or drawn.y0 < region.y0 - 0.5
                or drawn.x1 > region.x1 + 0.5
                or drawn.y1 > region.y1 + 0.5
            ):
                out.append((g.axes, drawn, region))
        return out

    def close(self) -> None:
        """Close the canvas widget; the figure is not shown any more."""
        self.widget.close()


def grid_positions(
    width: int,
    height: int,
    rows: int,
    cols: int,
    *,
    left: float,
    right: float,
    top: float,
    bottom: float,
    wgap: float,
    hgap: float,
    width_ratios=None,
    height_ratios=None,
) -> list[list[tuple[float, float, float, float]]]:
    """Axes rectangles (figure fractions) of a rows x cols grid whose margins and gaps are
    given in CSS pixels, so labels keep their room at any figure size."""
    wr = np.asarray(width_ratios if width_ratios is not None else [1] * cols, float)
    hr = np.asarray(height_ratios if height_ratios is not None else [1] * rows, float)
    inner_w = width - left - right - wgap * (cols - 1)
    inner_h = height - top - bottom - hgap * (rows - 1)
    ws, hs = inner_w * wr / wr.sum(), inner_h * hr / hr.sum()
    out = []
    y = height - top
    for i in range(rows):
        y -= hs[i]
        x = left
        row = []
        for j in range(cols):
            row.append((x / width, y / height, ws[j] / width, hs[i] / height))
            x += ws[j] + wgap
        out.append(row)
        y -= hgap
    return out


def mimebundle(widget: W.Widget, view: FigureView, text: str) -> dict:
    """Display data for a widget plus a static PNG of its figure.

    JupyterLab renders the live widget (its widget-view type ranks first); nbconvert, nbval
    and viewers without a kernel fall back to ``image/png``.
    """
    data = widget._repr_mimebundle_() or {}
    data["image/png"] = base64.b64encode(view.png()).decode("ascii")
    data["text/plain"] = text
    return data
