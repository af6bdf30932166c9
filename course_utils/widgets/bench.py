"""How fast the widgets react, measured in the kernel: ``python -m course_utils.widgets.bench``.

Three figures (targets in brackets):

1. control change -> redrawn plot (median < 100 ms): the time from setting an
   :class:`ActivationExplorer` control (as a click does) until the new frame is rendered
   and encoded for the browser, over a mix of controls. The canvas is marked as shown by a
   frontend, so every change pays for the rendering a learner would wait for.
2. training + redraw updates per second (>= 10): the explorer's own training loop
   (``run()``: 10 steps, redraw, yield to the event loop) on the default model, a 4-layer
   100-wide tanh MLP at batch size 64.
3. probe overhead (< 30 %): the extra time per training step of the same model with an
   :class:`~course_utils.probes.ActivationProbe` attached, default settings and the
   explorer's settings, measured in interleaved blocks so that load from other processes
   hits both sides alike.

``--browser`` adds what a learner feels: in JupyterLab and headless Chromium (1280 x 800,
file browser open) at device pixel ratio 1 and 2, the time from each control change to
the changed canvas frame (median and p95 per control; targets: median < 100 ms at ratio
1, < 150 ms at ratio 2) and the frames per second while the explorer trains (>= 20).

Numbers on a shared machine are noisy: the script repeats and reports medians, and next
to each wall-clock figure the same measured in this process' CPU time, which other
processes' load does not inflate (the kernel is single-threaded: torch runs one thread).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import numpy as np
import torch

from .. import load_mnist, make_mlp
from ..probes import ActivationProbe
from .explorer import ActivationExplorer
from .playground import NormalizationPlayground
from .scaling import ScalingExplorer

__all__ = ["control_latency", "updates_per_second", "probe_overhead", "main"]

# a learner's session: mostly sliders and menus that keep the layout, some that change it
_CHANGES = [
    ("init_scale", 2.0), ("lr", 0.2), ("norm", "batch"), ("batch_size", 32), ("placement", "after"),
    ("norm", "layer"), ("init_scale", 0.5), ("lr", 0.05), ("width", 64), ("depth", 6),
    ("norm", "none"), ("activation", "relu"), ("batch_size", 128), ("placement", "before"),
    ("init_scale", 1.0), ("width", 100), ("lr", 0.1), ("activation", "tanh"), ("depth", 4),
    ("batch_size", 64),
]  # fmt: skip


def _pretend_live(view) -> None:
    """Make a FigureView render and encode frames as if a page showed it (it said hello);
    without a kernel the frames go nowhere."""
    view.widget.live = True


def control_latency(rounds: int = 2) -> dict[str, float]:
    """Milliseconds from a control change to the rendered, encoded frame (median, p95)."""
    ex = ActivationExplorer()
    _pretend_live(ex.view)
    ex.step(20)
    times, cpu = [], []
    for _ in range(rounds):
        for key, value in _CHANGES:
            t0, c0 = time.perf_counter(), time.process_time()
            ex.controls[key].value = value  # observers re-initialise and redraw
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    ex.close()
    t, c = 1e3 * np.array(times), 1e3 * np.array(cpu)
    return {
        "median_ms": float(np.median(t)),
        "p95_ms": float(np.percentile(t, 95)),
        "cpu_median_ms": float(np.median(c)),
        "cpu_p95_ms": float(np.percentile(c, 95)),
        "n": len(t),
    }


def widget_latency() -> dict[str, float]:
    """Median milliseconds to a redrawn frame for the playground and the scaling explorer."""
    out = {}
    pg = NormalizationPlayground()
    _pretend_live(pg.view)
    kinds = ["layer", "instance", "group", "batch"] * 3
    times = []
    for i, kind in enumerate(kinds):
        t0 = time.perf_counter()
        pg.set(kind=kind, sample=i % 4)
        times.append(time.perf_counter() - t0)
    out["playground_kind_ms"] = float(1e3 * np.median(times))
    times = []
    for i in range(12):
        t0 = time.perf_counter()
        pg.controls["channel"].value = i % 6
        times.append(time.perf_counter() - t0)
    out["playground_entry_ms"] = float(1e3 * np.median(times))
    pg.close()
    se = ScalingExplorer()
    _pretend_live(se.view)
    times = []
    for lr in np.geomspace(1e-4, 1.0, 12):
        t0 = time.perf_counter()
        se.controls["lr"].value = float(lr)
        times.append(time.perf_counter() - t0)
    out["scaling_lr_ms"] = float(1e3 * np.median(times))
    se.close()
    return out


def updates_per_second(seconds: float = 6.0) -> dict[str, float]:
    """The explorer's training loop with a live canvas: updates (and steps) per second."""
    ex = ActivationExplorer(max_steps=100_000)
    _pretend_live(ex.view)
    ex.step(10)

    async def go():
        task = asyncio.get_running_loop().create_task(ex.run())
        await asyncio.sleep(seconds)
        ex.pause()
        await task

    s0, t0, c0 = ex.session.step, time.perf_counter(), time.process_time()
    asyncio.run(go())
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = ex.session.step - s0
    ex.close()
    updates = steps / ex.steps_per_update
    # CPU-time rate: the loop's sleeps (pause_s per update) are wall time, not CPU time
    busy = cpu + updates * 0.01
    return {
        "updates_per_s": updates / elapsed,
        "steps_per_s": steps / elapsed,
        "cpu_updates_per_s": updates / busy,
    }


def probe_overhead(blocks: int = 30, steps: int = 20) -> dict[str, float]:
    """Extra time per training step with a probe attached, in % of a step without one."""
    data = load_mnist()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data.x_train), (steps, 64), generator=g)
    configs = {
        "none": None,
        "default": {},
        "explorer": {"hist_every": 5, "grad_every": 5, "inputs": True},
    }
    runs = {}
    for name, kw in configs.items():
        model = make_mlp(depth=4, width=100, activation="tanh")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = ActivationProbe(model, **kw) if kw is not None else None
        runs[name] = (model, opt, probe)

    def block(model, opt, probe) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(steps):
            loss = torch.nn.functional.cross_entropy(
                model(data.x_train[idx[s]]), data.y_train[idx[s]]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if probe is not None:
            probe.stat("std")  # include the deferred statistics
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    times = {name: [] for name in runs}
    for _ in range(blocks):
        for name, run in runs.items():  # interleaved: background load hits every config
            times[name].append(block(*run))
    wall = {k: float(np.median([t[0] for t in v])) for k, v in times.items()}
    cpu = {k: float(np.median([t[1] for t in v])) for k, v in times.items()}
    out = {"step_ms": 1e3 * wall["none"], "cpu_step_ms": 1e3 * cpu["none"]}
    for name in ("default", "explorer"):
        out[f"{name}_overhead_pct"] = 100.0 * (wall[name] / wall["none"] - 1.0)
        out[f"cpu_{name}_overhead_pct"] = 100.0 * (cpu[name] / cpu["none"] - 1.0)
    return out


def felt_latency(ratio: float, changes: int = 10, fps_seconds: float = 6.0) -> dict:
    """The browser's view (see :mod:`course_utils.widgets.browser`): JupyterLab in headless
    Chromium at 1280 x 800 and device pixel ratio ``ratio`` runs the widgets' demo notebook;
    every control of the three widgets is changed ``changes`` times (back and forth), each
    timed in the page from the change to the changed canvas frame. Returns
    ``{"latency_ms": {control: [ms, ...]}, "fps": frames/s while training, "layout": ...}``.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    from .browser import Lab, Probe, open_page, run_notebook

    root = Path(__file__).resolve().parents[2]
    demo = root / "tests" / "fixtures" / "widgets_demo.ipynb"
    controls = [
        ("+10 steps", "dropdown", "normalization"), ("+10 steps", "dropdown", "placed"),
        ("+10 steps", "dropdown", "activation"), ("+10 steps", "toggle", ""),
        ("+10 steps", "slider", "depth"), ("+10 steps", "slider", "width"),
        ("+10 steps", "slider", "init scale"), ("+10 steps", "slider", "learning rate"),
        ("+10 steps", "slider", "batch size"), ("+10 steps", "button", "reset"),
        ("groups G", "toggle", ""), ("groups G", "dropdown", "groups G"),
        ("groups G", "dropdown", "tensor"), ("groups G", "slider", "sample n"),
        ("groups G", "slider", "channel c"), ("add outliers", "slider", "learning rate"),
        ("add outliers", "slider", "steps"), ("add outliers", "toggle", ""),
        ("add outliers", "checkbox", "add outliers"),
    ]  # fmt: skip
    names = {"+10 steps": "explorer", "groups G": "playground", "add outliers": "scaling"}
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp), root)
        try:
            lab.wait_ready()
            shutil.copy(demo, Path(tmp) / demo.name)
            with sync_playwright() as pw:
                ctx, page, console = open_page(pw, Path(tmp) / "profile", ratio)
                try:
                    run_notebook(page, lab, demo.name)
                    page.wait_for_timeout(2000)
                    out = {"latency_ms": {}, "layout": {}}
                    for marker, name in names.items():
                        out["layout"][name] = Probe(page, marker).layout()
                    for marker, kind, label in controls:
                        ms = Probe(page, marker).latency(kind, label, changes)
                        key = f"{names[marker]}: {label or kind}"
                        out["latency_ms"][key] = ms.tolist()
                    out["fps"] = Probe(page, "+10 steps").frames_per_second(fps_seconds)
                    out["console"] = console
                finally:
                    ctx.close()
        finally:
            lab.stop()
    return out


def felt_markdown(results: dict[float, dict]) -> str:
    """Felt latency per control (median / p95 ms) at each device pixel ratio, and frames/s
    while training, as a Markdown table."""
    ratios = sorted(results)
    head = " | ".join(f"DPR {r:g}: median / p95" for r in ratios)
    lines = [f"| control | {head} |", "| --- |" + " --- |" * len(ratios)]
    for key in results[ratios[0]]["latency_ms"]:
        cells = []
        for r in ratios:
            v = np.asarray(results[r]["latency_ms"][key], dtype=float)
            cells.append(f"{np.nanmedian(v):.0f} / {np.nanpercentile(v, 95):.0f} ms")
        lines.append(f"| {key} | {' | '.join(cells)} |")
    fps = " | ".join(f"{results[r]['fps']:.1f} frames/s" for r in ratios)
    lines.append(f"| explorer: frames/s while training (6x100 tanh MLP) | {fps} |")
    return "\n".join(lines)


def bench_widgets_markdown(repeat: int = 3) -> str:
    """The widget figures as a Markdown table (medians over ``repeat`` runs) for
    docs/benchmarks.md."""
    lat = [control_latency() for _ in range(repeat)]
    other = [widget_latency() for _ in range(repeat)]
    ups = [updates_per_second() for _ in range(repeat)]
    probe = [probe_overhead() for _ in range(repeat)]

    def med(rows, key):
        return float(np.median([r[key] for r in rows]))

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    rows = [
        (
            "explorer: control change to redrawn plot, median",
            f"{med(lat, 'median_ms'):.0f} ms",
            "< 100 ms",
            verdict(med(lat, "median_ms") < 100),
        ),
        ("explorer: control change to redrawn plot, p95", f"{med(lat, 'p95_ms'):.0f} ms", "", ""),
        (
            "playground: change the normalization",
            f"{med(other, 'playground_kind_ms'):.0f} ms",
            "< 100 ms",
            verdict(med(other, "playground_kind_ms") < 100),
        ),
        (
            "playground: change the highlighted entry",
            f"{med(other, 'playground_entry_ms'):.0f} ms",
            "< 100 ms",
            verdict(med(other, "playground_entry_ms") < 100),
        ),
        (
            "scaling explorer: move the learning rate",
            f"{med(other, 'scaling_lr_ms'):.0f} ms",
            "< 100 ms",
            verdict(med(other, "scaling_lr_ms") < 100),
        ),
        (
            "explorer: training + redraw (4x100 MLP, batch 64)",
            f"{med(ups, 'updates_per_s'):.1f} updates/s ({med(ups, 'steps_per_s'):.0f} steps/s)",
            ">= 10 updates/s",
            verdict(med(ups, "updates_per_s") >= 10),
        ),
        (
            "probe overhead, explorer settings (histograms every 5 steps)",
            f"{med(probe, 'explorer_overhead_pct'):.0f}% of a {med(probe, 'step_ms'):.2f} ms step",
            "< 30%",
            verdict(med(probe, "explorer_overhead_pct") < 30),
        ),
        (
            "probe overhead, default settings (histograms every step)",
            f"{med(probe, 'default_overhead_pct'):.0f}%",
            "< 30%",
            verdict(med(probe, "default_overhead_pct") < 30),
        ),
    ]
    lines = ["| measurement | result | target | |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="repeat each measurement")
    parser.add_argument(
        "--browser", action="store_true",
        help="also measure the felt latency in JupyterLab + headless Chromium at device "
        "pixel ratio 1 and 2 (needs playwright and /usr/bin/chromium)",
    )  # fmt: skip
    parser.add_argument("--changes", type=int, default=10, help="changes per control (browser)")
    args = parser.parse_args(argv)
    if args.browser:
        import os

        load = os.getloadavg()[0]
        results = {r: felt_latency(r, args.changes) for r in (1.0, 2.0)}
        print(
            f"felt latency in the browser (1280 x 800, file browser open; load average "
            f"{load:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs):"
        )
        print(felt_markdown(results))
    print(
        f"widgets benchmark: {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}, {args.repeat} repeats (medians)"
    )
    lat = [control_latency() for _ in range(args.repeat)]

    def med(rows, key):
        return float(np.median([r[key] for r in rows]))

    print(
        f"control change -> redrawn plot: median {med(lat, 'median_ms'):.0f} ms, "
        f"p95 {med(lat, 'p95_ms'):.0f} ms (CPU time: median {med(lat, 'cpu_median_ms'):.0f} ms, "
        f"p95 {med(lat, 'cpu_p95_ms'):.0f} ms; {lat[0]['n']} changes x {args.repeat}; "
        "target median < 100 ms)"
    )
    other = [widget_latency() for _ in range(args.repeat)]
    for key in other[0]:
        print(f"  {key}: {np.median([o[key] for o in other]):.0f} ms")
    ups = [updates_per_second() for _ in range(args.repeat)]
    print(
        f"explorer training + redraw: {med(ups, 'updates_per_s'):.1f} updates/s, "
        f"{med(ups, 'steps_per_s'):.0f} steps/s (CPU time: {med(ups, 'cpu_updates_per_s'):.1f} "
        "updates/s; target >= 10 updates/s)"
    )
    probe = [probe_overhead() for _ in range(args.repeat)]
    print(
        f"probe overhead (4x100 tanh MLP, batch 64, step {med(probe, 'step_ms'):.2f} ms): "
        f"default settings {med(probe, 'default_overhead_pct'):.0f}%, explorer settings "
        f"{med(probe, 'explorer_overhead_pct'):.0f}% (CPU time: step "
        f"{med(probe, 'cpu_step_ms'):.2f} ms, {med(probe, 'cpu_default_overhead_pct'):.0f}% and "
        f"{med(probe, 'cpu_explorer_overhead_pct'):.0f}%; target < 30%)"
    )


if __name__ == "__main__":
    main()
