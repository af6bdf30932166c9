"""The ActivationExplorer in a real browser: JupyterLab + headless Chromium (Playwright).

Starts JupyterLab on a free loopback port with a token, in a temporary copy of a notebook
that shows an ActivationExplorer, runs all cells, clicks *train*, moves a slider while it
trains, and checks from the DOM and from screenshots that the plot changes and that no
cell shows an error. Screenshots go to ``test-artifacts/browser/``.

By default it opens the learner's lesson 02, which uses the explorer. Point it at other
notebooks (for example the small ``tests/fixtures/explorer_demo.ipynb``) with
``COURSE_BROWSER_NOTEBOOKS=path`` (several, separated by ``os.pathsep``); each notebook must
display an ActivationExplorer.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DEFAULT_NOTEBOOK = ROOT / "lessons" / "02_activations_and_covariate_shift.ipynb"
NOTEBOOKS = [
    Path(p) if Path(p).is_absolute() else ROOT / p
    for p in os.environ.get("COURSE_BROWSER_NOTEBOOKS", str(DEFAULT_NOTEBOOK)).split(os.pathsep)
    if p
]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (see .ci/browser-deps)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status


class Lab:
    """A JupyterLab server in ``root``, shut down (with its kernels) by :meth:`stop`."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runtime = root / ".runtime"
        env = dict(os.environ)
        env.update(
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_CONFIG_DIR=str(root / ".config"),
            # the widgets' Python code, whichever directory the server starts in
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
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
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            '{"fetchNews": "false", "checkForUpdates": false, "doNotDisturbMode": true}'
        )
        self.log = open(root / "lab.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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


@pytest.fixture
def lab(tmp_path):
    server = Lab(tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _changed(a: bytes, b: bytes) -> float:
    """Fraction of pixels that differ between two screenshots of the same element."""
    x, y = _image(a), _image(b)
    if x.shape != y.shape:
        return 1.0
    return float(np.mean(np.abs(x - y).max(axis=-1) > 24))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_explorer_trains_and_reacts_in_jupyterlab(lab, notebook, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    assert notebook.exists(), notebook
    shutil.copy(notebook, lab.root / notebook.name)
    out = ARTIFACTS / notebook.stem
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = ctx.new_page()
            t0 = time.monotonic()
            timings: dict[str, float] = {}
            page.goto(f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}&reset", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000,
            )
            timings["kernel up"] = time.monotonic() - t0
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # the explorer appears: its buttons and its live canvas
            explorer = page.locator(".jp-OutputArea-output").filter(
                has=page.locator("button", has_text="train")
            ).first  # fmt: skip
            expect(explorer).to_be_visible(timeout=60_000)
            canvas = explorer.locator("canvas").first
            expect(canvas).to_be_visible(timeout=30_000)
            status = explorer.locator(".widget-html-content").filter(has_text="step").first
            expect(status).to_contain_text("step", timeout=30_000)
            page.wait_for_function(  # every cell has run
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w.sessionContext.session.kernel.status === 'idle'"
                " && !w.content.widgets.some(c => c.model.type === 'code'"
                " && c.promptNode && c.promptNode.textContent.includes('*')); }",
                timeout=60_000,
            )
            timings["cells ran"] = time.monotonic() - t0
            page.wait_for_timeout(1000)  # the first frame
            before = canvas.screenshot(path=str(out / "1_initial.png"))

            # train: the step counter runs and the plot changes while it trains
            explorer.locator("button", has_text="train").click()
            page.wait_for_function(
                "el => /step \\d+/.test(el.textContent) &&"
                " parseInt(el.textContent.match(/step (\\d+)/)[1]) >= 100",
                arg=status.element_handle(),
                timeout=30_000,
            )
            timings["trained 100 steps"] = time.monotonic() - t0
            during = canvas.screenshot(path=str(out / "2_training.png"))
            assert _changed(before, during) > 0.01, "the plot did not change while training"

            # move a slider while training: the kernel handles the change between two chunks,
            # re-initialises (the step count starts again) and trains on
            slider = explorer.locator(".widget-slider").filter(has_text="init scale").first
            readout = slider.locator(".widget-readout")
            old_value = readout.text_content()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            for _ in range(12):
                handle.press("ArrowRight")
            expect(readout).not_to_have_text(old_value, timeout=10_000)
            new_value = readout.text_content().strip()
            expect(status).to_contain_text(f"init scale {new_value}", timeout=20_000)
            expect(explorer.locator("button", has_text="pause")).to_be_enabled()  # still training
            page.wait_for_timeout(1500)
            moved = canvas.screenshot(path=str(out / "3_after_slider.png"))
            assert _changed(during, moved) > 0.01, "the plot did not change after the slider"
            # pause (unless the run already reached its last step, which on a fast machine
            # can happen during the screenshot): afterwards the step counter stands still
            pause = explorer.locator("button", has_text="pause")
            if pause.is_enabled():
                try:
                    pause.click(timeout=5_000)
                except PlaywrightTimeout:
                    assert not pause.is_enabled(), "pause stayed enabled but could not be clicked"
            expect(explorer.locator("button", has_text="train")).to_be_enabled(timeout=20_000)
            stopped_at = status.text_content()
            page.wait_for_timeout(1000)
            assert status.text_content() == stopped_at, "training went on after pause"
            page.screenshot(path=str(out / "4_page.png"), full_page=True)
            timings["done"] = time.monotonic() - t0
            print("browser timings (s):", {k: round(v, 1) for k, v in timings.items()})

            # no cell shows an error, a traceback or a widget that failed to render
            errors = page.locator(
                ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'],"
                " .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
            )
            assert errors.count() == 0, errors.all_inner_texts()
            body = page.locator(".jp-Notebook").inner_text()
            assert "Error displaying widget" not in body and "Traceback" not in body
        finally:
            ctx.close()
