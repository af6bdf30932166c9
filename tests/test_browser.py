"""The widgets in a real browser: JupyterLab + headless Chromium (Playwright).

Two tests, on a JupyterLab server on a free loopback port (``course_utils.widgets.browser``
starts it and measures in the page):

- ``test_widgets_fit_and_answer`` opens ``tests/fixtures/widgets_demo.ipynb`` (the three
  widgets with the arguments lessons 02, 07 and 01 use) in a 1280 x 800 window with the
  file browser open, at device pixel ratio 1 and 2, and checks that every widget fits its
  output area (no horizontal scrolling, the explorer's accuracy axis on screen, the
  explorer's controls and plots within 660 px of height), that idle frames are rendered at
  the screen's resolution and training frames at one pixel per CSS pixel, measures the felt
  latency of every control (control change in the page to the changed canvas frame) and
  the frames per second while training, and checks the console (no 'capture_scroll' or
  other 'No handler' message, no error).
- ``test_explorer_trains_and_reacts_in_jupyterlab`` opens a lesson (default: 02) and
  trains, moves a slider while training and pauses.

What is asserted about time, and why: the targets (median under 100 ms per control at
device pixel ratio 1, under 150 ms at ratio 2, 20 frames/s while training) hold on a quiet
machine, but CI shares 2 cores with other jobs, where the same code measured 2-4 times
slower. So by default the test asserts 3x the targets (300 ms, 450 ms, 7 frames/s): that
still fails on a regression like the old full-figure redraw at ratio 2 (270-370 ms on a
quiet machine), and it prints every measurement. ``COURSE_BROWSER_STRICT=1`` asserts the
targets themselves (run it on a quiet machine); ``python -m course_utils.widgets.bench
--browser`` measures them with more repetitions for docs/benchmarks.md.
Screenshots and the measurements go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from course_utils.widgets.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Lab,
    Probe,
    open_page,
    run_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DEMO = ROOT / "tests" / "fixtures" / "widgets_demo.ipynb"
DEFAULT_NOTEBOOK = ROOT / "lessons" / "02_activations_and_covariate_shift.ipynb"
NOTEBOOKS = [
    Path(p) if Path(p).is_absolute() else ROOT / p
    for p in os.environ.get("COURSE_BROWSER_NOTEBOOKS", str(DEFAULT_NOTEBOOK)).split(os.pathsep)
    if p
]
STRICT = os.environ.get("COURSE_BROWSER_STRICT") == "1"
# targets (median ms per control at ratio 1 and 2, frames/s); CI asserts 3x (see above)
TARGET_MS = {1: 100.0, 2: 150.0}
TARGET_FPS = 20.0
SLACK = 1.0 if STRICT else 3.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (see .ci/browser-deps, or set COURSE_CHROMIUM)",
    ),
]

# every control of each widget: (widget marker, kind, label)
EXPLORER, PLAYGROUND, SCALING = "+10 steps", "groups G", "add outliers"
CONTROLS = [
    (EXPLORER, "dropdown", "normalization"),
    (EXPLORER, "dropdown", "placed"),
    (EXPLORER, "dropdown", "activation"),
    (EXPLORER, "toggle", ""),
    (EXPLORER, "slider", "depth"),
    (EXPLORER, "slider", "width"),
    (EXPLORER, "slider", "init scale"),
    (EXPLORER, "slider", "learning rate"),
    (EXPLORER, "slider", "batch size"),
    (EXPLORER, "button", "reset"),
    (EXPLORER, "button", "+10 steps"),
    (PLAYGROUND, "dropdown", "groups G"),
    (PLAYGROUND, "toggle", ""),
    (PLAYGROUND, "dropdown", "tensor"),
    (PLAYGROUND, "slider", "sample n"),
    (PLAYGROUND, "slider", "channel c"),
    (SCALING, "slider", "learning rate"),
    (SCALING, "slider", "steps"),
    (SCALING, "toggle", ""),
    (SCALING, "checkbox", "add outliers"),
]
CHANGES_PER_CONTROL = int(os.environ.get("COURSE_BROWSER_CHANGES", "4"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("lab"), ROOT)
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
            viewport={"width": 1280, "height": 800},
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
            canvas = explorer.locator("canvas.course-frame-canvas").first
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
            canvas.scroll_into_view_if_needed()
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


def _ink(png: bytes) -> float:
    """Share of dark pixels (text, lines) in a screenshot."""
    return float(np.mean(_image(png).max(axis=-1) < 128))


@pytest.mark.parametrize("ratio", [1, 2], ids=["dpr1", "dpr2"])
def test_widgets_fit_and_answer(lab, ratio, tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copy(DEMO, lab.root / DEMO.name)
    out = ARTIFACTS / f"widgets_dpr{ratio}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    report: dict = {"ratio": ratio, "window": [1280, 800], "layout": {}, "latency_ms": {}}
    with sync_playwright() as pw:
        ctx, page, console = open_page(pw, tmp_path / "profile", ratio)
        try:
            run_notebook(page, lab, DEMO.name)
            report["notebook_ran_s"] = round(time.monotonic() - t0, 1)
            probes = {m: Probe(page, m) for m in (EXPLORER, PLAYGROUND, SCALING)}
            for probe in probes.values():
                page.wait_for_function(
                    "m => [...document.querySelectorAll('.jp-OutputArea-output')].some(o =>"
                    " o.textContent.includes(m) && o.querySelector('canvas.course-frame-canvas'))",
                    arg=probe.marker, timeout=30_000,
                )  # fmt: skip
                probe.settle()

            # layout: every widget inside its output area, at the screen's resolution
            for marker, probe in probes.items():
                geo = probe.layout()
                report["layout"][marker] = geo
                name = marker.replace(" ", "_").replace("+", "")
                page.screenshot(path=str(out / f"{name}.png"))
                assert geo["scroll_width"] <= geo["client_width"], (marker, geo)
                assert geo["canvas_left"] >= geo["output_left"] - 0.5, (marker, geo)
                assert geo["canvas_right"] <= geo["output_right"] + 0.5, (marker, geo)
                assert geo["controls_right"] <= geo["output_right"] + 0.5, (marker, geo)
                assert geo["canvas_width"] >= 0.95 * geo["output_width"], (marker, geo)
                assert abs(geo["canvas_pixels"][0] - ratio * geo["canvas_width"]) <= ratio
            explorer = report["layout"][EXPLORER]
            assert explorer["widget_height"] <= 660, explorer  # controls and plots together
            # the accuracy axis (ticks and label right of the loss plot) is on screen
            right = {
                "x": explorer["canvas_right"] - 48, "y": 0, "width": 46, "height": 800,
            }  # fmt: skip
            probes[EXPLORER].layout()  # scrolls it into view
            box = page.locator(".jp-OutputArea-output", has_text=EXPLORER).locator(
                "canvas.course-frame-canvas"
            ).bounding_box()  # fmt: skip
            right.update(y=box["y"] + box["height"] / 2, height=box["height"] / 2 - 30)
            assert _ink(page.screenshot(clip=right)) > 0.01, "accuracy axis not drawn"

            # felt latency of every control
            for marker, kind, label in CONTROLS:
                ms = probes[marker].latency(kind, label, CHANGES_PER_CONTROL)
                report["latency_ms"][f"{marker} / {kind} {label}".strip()] = ms.tolist()
            # frames while training, at one pixel per CSS pixel; full resolution after
            probe = probes[EXPLORER]
            probe.settle()
            probe.change("button", "train")
            page.wait_for_timeout(600)
            training = probe.layout()
            probe.change("button", "pause")
            probe.settle()
            report["fps"] = probe.frames_per_second(4.0)
            after = probe.layout()
            page.screenshot(path=str(out / "after_training.png"))
        finally:
            ctx.close()
    report["console"] = console
    report["seconds"] = round(time.monotonic() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    summary = {
        k: (round(float(np.nanmedian(v))), round(float(np.nanmax(v))))
        for k, v in report["latency_ms"].items()
    }
    print(f"DPR {ratio}: median, max ms per control:", json.dumps(summary, indent=0))
    print(f"DPR {ratio}: {report['fps']:.1f} frames/s while training; {report['seconds']} s")

    assert training["canvas_pixels"][0] == pytest.approx(training["canvas_width"], abs=1)
    assert after["canvas_pixels"][0] == pytest.approx(ratio * after["canvas_width"], abs=ratio)
    for key, values in report["latency_ms"].items():
        assert not np.isnan(values).any(), f"{key}: a change drew no new frame in 10 s"
    bound = SLACK * TARGET_MS[ratio]
    slow = {k: v for k, v in summary.items() if k.split(" / ")[0] != SCALING and v[0] > bound}
    assert not slow, f"median felt latency over {bound:.0f} ms: {slow}"
    assert report["fps"] >= TARGET_FPS / SLACK, report["fps"]
    # nothing from the widgets in the console: ipympl's 'No handler for the
    # 'capture_scroll' message type' was logged for every figure before
    widget_noise = [
        m for m in console
        if any(w in m for w in ("capture_scroll", "No handler", "anywidget", "course-frame"))
    ]  # fmt: skip
    errors = [m for m in console if m.startswith(("error", "pageerror"))]
    assert not widget_noise and not errors, console
