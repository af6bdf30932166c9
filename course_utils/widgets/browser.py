"""The widgets as a learner sees them: JupyterLab in headless Chromium, driven by Playwright.

Shared by the browser test (``tests/test_browser.py``) and the felt-latency benchmark
(``python -m course_utils.widgets.bench --browser``): starts JupyterLab on a free loopback
port, opens a notebook at a laptop's window size (1280 x 800, file browser open), runs it,
and measures in the page itself:

- **layout**: each widget's width against its output area's (no horizontal scrolling), the
  height from the first control row to the bottom of the figure;
- **felt latency**: from a control change, made in the page and timestamped there with
  ``performance.now()``, to the first animation frame after the kernel's new picture was
  drawn into the widget's canvas (a hook on the canvas' ``drawImage``);
- **frames per second** while the explorer trains;
- the **console**: every message the page logged.

Needs Playwright (a development dependency) and Debian's ``/usr/bin/chromium``; Playwright
never downloads a browser here.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "Lab", "open_page", "run_notebook", "Probe"]

# Debian's Chromium, or the Chromium / Chrome binary COURSE_CHROMIUM names (e.g. on macOS)
CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}

# installed before any page script: timestamps of the frames drawn into the widgets' canvases
_HOOK = """
(() => {
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const canvas = this.canvas;
    const result = draw.apply(this, args);
    if (canvas && canvas.classList && canvas.classList.contains("course-frame-canvas")) {
      const frames = (canvas.__frames = canvas.__frames || []);
      const slot = frames.length;
      frames.push(null);
      // the frame that shows the new pixels starts at the next animation frame
      requestAnimationFrame(() => { frames[slot] = performance.now(); });
    }
    return result;
  };
})();
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status


class Lab:
    """A JupyterLab server in ``root`` on 127.0.0.1, shut down (with its kernels) by
    :meth:`stop`. ``pythonpath``: put first on the kernels' PYTHONPATH."""

    def __init__(self, root: Path, pythonpath: Path | None = None):
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime = root / ".runtime"
        env = dict(os.environ)
        env.update(
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_CONFIG_DIR=str(root / ".config"),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(pythonpath or ""), env.get("PYTHONPATH")])
            ),
        )
        args = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={root / '.settings'}",
            f"--LabApp.workspaces_dir={root / '.workspaces'}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip
        if os.geteuid() == 0:  # CI containers run as root
            args.append("--allow-root")
        # no news feed, update check or toasts: nothing reaches out, nothing covers the page
        settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false, "doNotDisturbMode": true}'
        )
        self.log = open(root / "lab.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early:\n{self.tail()}")
            try:
                if _get(f"{self.url}/api/status?token={self.token}") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer in {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.root / "lab.log").read_text(errors="replace")[-3000:]

    def _kernel_pids(self) -> list[int]:
        # kernels run in their own sessions: find ours by the connection file in our runtime dir
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if str(self.runtime).encode() in cmd:
                    pids.append(int(proc.name))
        return pids

    def stop(self) -> None:
        """Shut the server and its kernels down: politely, then by signal, by process id."""
        kernels = self._kernel_pids()
        try:
            req = urllib.request.Request(
                f"{self.url}/api/shutdown",
                method="POST",
                headers={"Authorization": f"token {self.token}"},
            )
            urllib.request.urlopen(req, timeout=5)  # noqa: S310 - loopback only
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for pid in kernels + self._kernel_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def open_page(playwright, profile: Path, device_scale_factor: float = 1.0):
    """A fresh Chromium profile at 1280 x 800 with the frame hook; returns (context, page,
    console messages list)."""
    ctx = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=VIEWPORT,
        device_scale_factor=device_scale_factor,
    )
    ctx.add_init_script(_HOOK)
    page = ctx.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    return ctx, page, console


def run_notebook(page, lab: Lab, name: str, timeout_ms: int = 120_000) -> None:
    """Open ``name`` (in the lab's root) with the file browser shown, run all cells and
    wait until the kernel is idle with every cell run."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset", timeout=60_000)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
        " && window.jupyterapp.shell.currentWidget.sessionContext"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session"
        " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
        timeout=60_000,
    )
    # the file browser open, as a learner has it
    page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
    page.wait_for_function("() => !window.jupyterapp.shell.leftCollapsed", timeout=10_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w.sessionContext.session.kernel.status === 'idle'"
        " && !w.content.widgets.some(c => c.model.type === 'code'"
        " && (c.promptNode && c.promptNode.textContent.includes('*')"
        " || c.model.executionCount === null)); }",
        timeout=timeout_ms,
    )


# -- measurements inside the page -----------------------------------------------------------

_LAYOUT = """
(marker) => {
  const outs = [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(o => o.querySelector('canvas.course-frame-canvas') && o.textContent.includes(marker));
  const o = outs[0];
  if (!o) return null;
  o.scrollIntoView({block: 'start'});
  const r = o.getBoundingClientRect();
  const style = getComputedStyle(o);
  const inner = r.width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const canvas = o.querySelector('canvas.course-frame-canvas');
  const c = canvas.getBoundingClientRect();
  const kinds = ['.widget-inline-hbox', '.widget-button', '.widget-toggle-buttons',
                 '.widget-checkbox', '.widget-html', '.widget-hprogress'];
  const controls = [...o.querySelectorAll(kinds.join(', '))]
    .map(e => e.getBoundingClientRect()).filter(b => b.width > 0);
  const first = Math.min(...controls.map(b => b.top));
  return {
    output_width: inner, output_left: r.left + parseFloat(style.paddingLeft),
    output_right: r.right - parseFloat(style.paddingRight),
    scroll_width: o.scrollWidth, client_width: o.clientWidth,
    canvas_width: c.width, canvas_height: c.height, canvas_left: c.left, canvas_right: c.right,
    canvas_pixels: [canvas.width, canvas.height],
    controls_right: Math.max(...controls.map(b => b.right)),
    widget_height: c.bottom - first,
    window: [window.innerWidth, window.innerHeight], ratio: window.devicePixelRatio,
  };
}
"""

# one control change made in the page, timed there: resolves to ms until the frame drawn
_CHANGE = """
async ([marker, kind, label, step]) => {
  const o = [...document.querySelectorAll('.jp-OutputArea-output')]
    .find(o => o.querySelector('canvas.course-frame-canvas') && o.textContent.includes(marker));
  const canvas = o.querySelector('canvas.course-frame-canvas');
  const frames = (canvas.__frames = canvas.__frames || []);
  const find = (sel) => [...o.querySelectorAll(sel)].find(e => e.textContent.includes(label));
  let act;
  if (kind === 'dropdown') {
    const sel = find('.widget-dropdown').querySelector('select');
    const n = sel.options.length;
    act = () => { sel.selectedIndex = (sel.selectedIndex + step + n) % n;
                  sel.dispatchEvent(new Event('change', {bubbles: true})); };
  } else if (kind === 'slider') {
    const h = find('.widget-slider').querySelector('.noUi-handle');
    const key = step > 0 ? 'ArrowRight' : 'ArrowLeft';
    act = () => h.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
  } else if (kind === 'toggle') {
    const buttons = [...o.querySelectorAll('.widget-toggle-button')];
    const on = buttons.findIndex(b => b.classList.contains('mod-active'));
    const b = buttons[(on + step + buttons.length) % buttons.length];
    act = () => b.click();
  } else if (kind === 'checkbox') {
    const input = find('.widget-checkbox').querySelector('input');
    act = () => input.click();
  } else if (kind === 'button') {
    const b = [...o.querySelectorAll('button')].find(e => e.textContent.trim() === label);
    act = () => b.click();
  }
  const before = frames.length;
  const t0 = performance.now();
  act();
  return await new Promise((resolve) => {
    const poll = () => {
      if (frames.length > before && frames[before] !== null) resolve(frames[before] - t0);
      else if (performance.now() - t0 > 10000) resolve(null);
      else setTimeout(poll, 2);
    };
    poll();
  });
}
"""

_FRAMES = """
(marker) => {
  const o = [...document.querySelectorAll('.jp-OutputArea-output')]
    .find(o => o.querySelector('canvas.course-frame-canvas') && o.textContent.includes(marker));
  return (o.querySelector('canvas.course-frame-canvas').__frames || []).filter(t => t !== null);
}
"""


class Probe:
    """Measurements of one widget (found by a text its output shows, e.g. a button label)
    in a page that ran its notebook."""

    def __init__(self, page, marker: str):
        self.page = page
        self.marker = marker

    def layout(self) -> dict:
        """Output area and widget geometry in CSS pixels (see ``_LAYOUT``)."""
        return self.page.evaluate(_LAYOUT, self.marker)

    def frames(self) -> list[float]:
        """performance.now() of every frame drawn into the widget's canvas."""
        return self.page.evaluate(_FRAMES, self.marker)

    def settle(self, quiet_ms: float = 250, timeout_s: float = 15) -> None:
        """Wait until no frame arrived for ``quiet_ms``."""
        deadline = time.monotonic() + timeout_s
        count = -1
        while time.monotonic() < deadline:
            now = len(self.frames())
            if now == count:
                return
            count = now
            self.page.wait_for_timeout(quiet_ms)

    def change(self, kind: str, label: str, step: int = 1) -> float | None:
        """Change one control in the page; ms until the new frame (None: none in 10 s)."""
        return self.page.evaluate(_CHANGE, [self.marker, kind, label, step])

    def latency(self, kind: str, label: str, n: int = 10) -> np.ndarray:
        """``n`` changes of one control, back and forth, each after the last settled: ms."""
        out = []
        for i in range(n):
            self.settle()
            ms = self.change(kind, label, 1 if i % 2 == 0 else -1)
            out.append(np.nan if ms is None else ms)
        self.settle()
        return np.array(out)

    def frames_per_second(self, seconds: float = 4.0) -> float:
        """Frames drawn per second while the explorer trains (train, wait, pause)."""
        self.settle()
        self.change("button", "train")
        self.page.wait_for_timeout(1000)  # past the first, full-resolution frames
        start = len(self.frames())
        t0 = time.monotonic()
        self.page.wait_for_timeout(seconds * 1000)
        count = len(self.frames()) - start
        elapsed = time.monotonic() - t0
        self.change("button", "pause")
        self.settle()
        return count / elapsed
