"""A matplotlib figure that lives in a widget, is redrawn in place, and leaves a static image.

:class:`FigureView` owns one :class:`matplotlib.figure.Figure` that never touches pyplot:
no global figure registry, so nothing piles up in ``plt.get_fignums()`` and ``%matplotlib
inline`` does not print a second copy at the end of the cell. In JupyterLab the figure is an
ipympl canvas (whatever backend the notebook selected); without ipympl it falls back to a PNG
in an ``ipywidgets.Image``.

Redrawing: while a frontend shows the canvas, :meth:`FigureView.redraw` renders in the kernel
and pushes the changed pixels at once (no round trip through the browser). Without a frontend
(nbval, nbconvert, a unit test) nothing can see a redraw, so it only marks the canvas stale.

Static fallback: :func:`mimebundle` adds a PNG of the figure to a widget's display data, so
frontends that cannot run widgets (nbconvert's HTML, GitHub, a saved notebook opened without
its kernel) show the picture, while JupyterLab picks the live widget.
"""

from __future__ import annotations

import base64
import functools
import io
import warnings

import ipywidgets as W
import matplotlib as mpl
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

__all__ = ["OKABE_ITO", "GREY", "layer_colors", "FigureView", "mimebundle", "style", "style_axes"]

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

_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
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


class FigureView:
    """A figure shown as a live widget (ipympl canvas, or a PNG image without ipympl).

    Artists passed to :meth:`animate` change often (data, titles); everything else (axes,
    ticks, labels) is a background that is rendered only when it changes. :meth:`redraw`
    then restores the saved background and draws just the animated artists (blitting),
    which is several times cheaper than rendering the whole figure.

    Args:
        figsize: (width, height) in inches; dpi: pixels per inch on screen.
    Attributes:
        figure: the :class:`~matplotlib.figure.Figure` (draw on it with its own methods).
        widget: the ipywidgets element to put in a layout.
    """

    def __init__(self, figsize: tuple[float, float], dpi: int = 80):
        # an opaque white face whatever the rc says (the inline backend's is transparent):
        # blitting clears areas with it, and an opaque frame can replace the last one whole
        self.figure = Figure(figsize=figsize, dpi=dpi, facecolor="white", edgecolor="white")
        self._ipympl = False
        self._animated: list[Artist] = []
        self._texts: list[Artist] = []  # animated texts whose pixels are cached
        self._sprites: dict[int, tuple] = {}
        self._background = None
        self._key = None
        self.full_draws = 0  # how many redraws rendered the whole figure (for tests, benches)
        try:
            from ipympl.backend_nbagg import FigureManager
        except ImportError:  # pragma: no cover - ipympl is a course requirement
            FigureCanvasAgg(self.figure)
            self.widget = W.Image(format="png")
        else:
            canvas = _fast_canvas_class()(self.figure)
            # a manager is what pushes rendered frames to the browser; it is not registered
            # with pyplot, so the figure stays private to this view
            with warnings.catch_warnings():
                # ipympl's toolbar passes traitlets an argument it deprecates; not ours to fix
                warnings.simplefilter("ignore", DeprecationWarning)
                self._manager = FigureManager(canvas, 0)
            canvas.header_visible = False
            canvas.footer_visible = False
            canvas.toolbar_visible = False
            canvas.resizable = False
            canvas.capture_scroll = False
            self.widget = canvas
            self._ipympl = True
        # any full render (ours, or one the browser asks for) saves the background and
        # then adds the animated artists, so every frame sent is complete
        self.figure.canvas.mpl_connect("draw_event", self._on_draw)

    @property
    def live(self) -> bool:
        """True while a browser shows the canvas (ipympl heard from its frontend)."""
        return self._ipympl and not self.widget.syncing_data_url

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

    def _background_key(self) -> tuple:
        # what the background depends on: limits, scales and visibility of every axes
        return tuple(
            (ax.get_visible(), ax.get_xlim(), ax.get_ylim(), ax.get_xscale(), ax.get_yscale())
            for ax in self.figure.axes
        )

    def _on_draw(self, event) -> None:
        canvas = self.figure.canvas
        if canvas.is_saving():  # savefig draws animated artists itself
            return
        self._background = canvas.copy_from_bbox(self.figure.bbox)
        self._key = self._background_key()
        self._sprites.clear()  # cached text pixels hold the old background
        self.full_draws += 1
        self._draw_animated()

    @staticmethod
    def _shown(a: Artist) -> bool:
        return a.get_visible() and (a.axes is None or a.axes.get_visible())

    def _draw_animated(self) -> None:
        canvas = self.figure.canvas
        for a in self._animated:
            if self._shown(a):
                (a.axes or self.figure).draw_artist(a)
        for t in self._texts:
            key = (t.get_text(), self._shown(t))
            cached = self._sprites.get(id(t))
            if cached is not None and cached[0] == key:
                canvas.restore_region(cached[1])  # the same pixels as last frame
                continue
            if key[1] and key[0]:
                (t.axes or self.figure).draw_artist(t)
                box = t.get_window_extent(canvas.get_renderer()).padded(2)
                self._sprites[id(t)] = (key, canvas.copy_from_bbox(box))
            else:
                self._sprites.pop(id(t), None)

    def redraw(self, full: bool = False) -> None:
        """Show the figure's current state.

        With a frontend watching: blit the animated artists over the saved background, or
        render everything when the background changed (or ``full``), and push the frame at
        once. Without one (tests, nbval) only mark the canvas stale: nobody would see it.
        """
        if not self._ipympl:
            self.widget.value = self.png()
        elif self.live:
            self.render(full)
            # push the frame now rather than ask the browser to ask for one (a round trip),
            # and whole: the browser keeps only the last image that arrived before it
            # finished decoding, so a dropped diff frame would leave stale pixels
            self.widget._force_full = True
            self.widget.blit()
        else:
            self.widget.draw_idle()

    def render(self, full: bool = False) -> None:
        """Render the current state into the canvas' pixel buffer (what a live redraw
        costs, without sending it): blitting when the background is still valid."""
        canvas = self.figure.canvas
        if full or self._background is None or self._key != self._background_key():
            FigureCanvasAgg.draw(canvas)  # fires draw_event -> _on_draw
        else:
            canvas.restore_region(self._background)
            self._draw_animated()

    def png(self, dpi: float | None = None) -> bytes:
        """The figure as PNG bytes (at the screen dpi unless given)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=dpi or self.figure.dpi)
        return buf.getvalue()

    def close(self) -> None:
        """Close the canvas widget (and its toolbar); the figure is not shown any more."""
        if self._ipympl:
            toolbar = getattr(self._manager, "toolbar", None)
            if toolbar is not None:
                toolbar.close()
        self.widget.close()


@functools.cache
def _fast_canvas_class():
    """ipympl's canvas, sending frames as PNGs compressed at level 1 instead of 6: 4-5x
    less encoding time for a larger frame (~100 kB), which a local browser does not feel."""
    import numpy as np
    from ipympl.backend_nbagg import Canvas
    from PIL import Image

    class FastCanvas(Canvas):
        def get_diff_image(self):
            # matplotlib's FigureCanvasWebAggCore.get_diff_image but for the compression level
            if not self._png_is_old:
                return None
            pixels = np.asarray(self.get_renderer().buffer_rgba())
            buff = pixels.view(np.uint32).squeeze(2)
            if (
                self._force_full
                or buff.shape != self._last_buff.shape
                or (pixels[:, :, 3] != 255).any()
            ):
                self.set_image_mode("full")
                output = buff
            else:
                self.set_image_mode("diff")
                output = np.where(buff != self._last_buff, buff, 0)
            self._last_buff = buff.copy()
            self._force_full = False
            self._png_is_old = False
            data = output.view(dtype=np.uint8).reshape((*output.shape, 4))
            with io.BytesIO() as png:
                Image.fromarray(data).save(png, format="png", compress_level=1)
                return png.getvalue()

    return FastCanvas


def mimebundle(widget: W.Widget, view: FigureView, text: str) -> dict:
    """Display data for a widget plus a static PNG of its figure.

    JupyterLab renders the live widget (its widget-view type ranks first); nbconvert, nbval
    and viewers without a kernel fall back to ``image/png``.
    """
    data = widget._repr_mimebundle_() or {}
    data["image/png"] = base64.b64encode(view.png()).decode("ascii")
    data["text/plain"] = text
    return data
