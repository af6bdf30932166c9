"""A canvas widget that shows frames rendered in the kernel and reports the room it has.

:class:`FrameCanvas` is the browser half of :class:`~course_utils.widgets._display.FigureView`:
the kernel renders a matplotlib figure with Agg and sends it as a PNG; the page draws the
newest frame into a ``<canvas>`` of the figure's size in CSS pixels. The page reports back
the width of the notebook's output area and the screen's device pixel ratio (both on every
change, through a ``ResizeObserver``), so the kernel can lay the figure out to fit, and
acknowledges each frame it has drawn, so the kernel can skip frames the page could not show
anyway.

Why not ipympl's canvas: it cannot report the space it has (figures overflow narrow output
areas), it must render every frame at the screen's full device pixel ratio (four times the
pixels on a HiDPI laptop, also while training), and with matplotlib 3.11 it logs "No handler
for the 'capture_scroll' message type" to the browser console on every figure (matplotlib
3.11's web backend announces its new ``capture_scroll`` setting to the page on each refresh,
and ipympl 0.10's page code, which keeps that setting as a widget trait instead, has no
handler for the message). This widget has about 60 lines of page code and does one job.
The page code runs through `anywidget <https://anywidget.dev>`_, which JupyterLab, Notebook 7,
VS Code and Colab load without a build step.
"""

from __future__ import annotations

import anywidget
import traitlets

__all__ = ["FrameCanvas"]

_ESM = r"""
function outputWidth(el) {
  // the notebook's output area (JupyterLab, Notebook 7), else whatever holds the widget
  const host = el.closest(".jp-OutputArea-output") || el.parentElement || el;
  const style = getComputedStyle(host);
  const pad = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
  return { host, width: Math.floor(host.clientWidth - pad) };
}

function render({ model, el }) {
  const canvas = document.createElement("canvas");
  canvas.className = "course-frame-canvas";
  el.appendChild(canvas);
  const ctx = canvas.getContext("2d");
  let drawn = 0;        // sequence number of the frame on screen
  let queue = Promise.resolve();

  const size = () => {
    const [w, h] = model.get("size");
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
  };
  size();
  model.on("change:size", size);

  const onMessage = (msg, buffers) => {
    if (!msg || msg.type !== "frame") return;
    const blob = new Blob([buffers[0]], { type: "image/png" });
    const decoded = createImageBitmap(blob);  // decodes off the main thread
    // frames are drawn in the order they were sent; one decoded after a newer one is dropped
    queue = queue.then(() => decoded).then((bitmap) => {
      if (msg.seq > drawn) {
        drawn = msg.seq;
        if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
          canvas.width = bitmap.width;
          canvas.height = bitmap.height;
        }
        canvas.style.width = msg.css[0] + "px";
        canvas.style.height = msg.css[1] + "px";
        ctx.drawImage(bitmap, 0, 0);
        model.send({ type: "drawn", seq: msg.seq });
      }
      bitmap.close();
    }).catch(() => {});
  };
  model.on("msg:custom", onMessage);

  let reported = [0, 0];
  const report = () => {
    const { width } = outputWidth(el);
    const ratio = window.devicePixelRatio || 1;
    if (width > 0 && (width !== reported[0] || ratio !== reported[1])) {
      reported = [width, ratio];
      model.set("room", width);
      model.set("ratio", ratio);
      model.save_changes();
    }
  };
  const { host } = outputWidth(el);
  const observer = new ResizeObserver(report);
  observer.observe(host);
  const media = window.matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
  media.addEventListener("change", report);
  report();
  model.send({ type: "hello" });  // asks for the current frame

  return () => {
    observer.disconnect();
    media.removeEventListener("change", report);
    model.off("msg:custom", onMessage);
    model.off("change:size", size);
  };
}
export default { render };
"""

_CSS = """
.course-frame-canvas { display: block; }
"""


class FrameCanvas(anywidget.AnyWidget):
    """A ``<canvas>`` that draws PNG frames sent by :meth:`show_frame`.

    Traits (synced with the page):
        size: the figure's size in CSS pixels (width, height), set by the kernel.
        room: the width in CSS pixels of the output area the widget sits in, set by the page
            (0 until a page has shown the widget).
        ratio: the page's device pixel ratio (1 on most desktop screens, 2 on HiDPI laptops).
    Attributes:
        live: True once a page has shown the widget (it said hello).
        frames_sent, frames_drawn: sequence numbers of the last frame sent and the last one
            the page acknowledged as drawn.
    """

    _esm = _ESM
    _css = _CSS
    size = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(640, 480)).tag(
        sync=True
    )
    room = traitlets.Int(0).tag(sync=True)
    ratio = traitlets.Float(1.0).tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.live = False
        self.frames_sent = 0
        self.frames_drawn = 0
        self._on_hello = []
        self.on_msg(self._handle_message)

    def on_hello(self, callback) -> None:
        """Call ``callback()`` whenever a page starts showing the widget (it then needs a
        frame)."""
        self._on_hello.append(callback)

    def _handle_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "hello":
            self.live = True
            for callback in self._on_hello:
                callback()
        elif kind == "drawn":
            self.frames_drawn = max(self.frames_drawn, int(content.get("seq", 0)))

    @property
    def behind(self) -> int:
        """Frames sent that the page has not drawn yet."""
        return self.frames_sent - self.frames_drawn

    def show_frame(self, png: bytes, css_size: tuple[int, int]) -> None:
        """Send a PNG frame; the page draws it at ``css_size`` (CSS pixels), scaling it if
        its pixel size differs (frames rendered below the device pixel ratio)."""
        self.frames_sent += 1
        self.send(
            {"type": "frame", "seq": self.frames_sent, "css": [int(css_size[0]), int(css_size[1])]},
            buffers=[png],
        )
