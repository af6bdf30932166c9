"""The course's benchmarks: measure speed against the budgets and against torch.

    python -m course_utils.bench                 # everything, writes docs/benchmarks.md
    python -m course_utils.bench --only reference threads

Sections: ``notebooks`` (each solution notebook from a fresh kernel, median of 3),
``reference`` (course_utils.reference vs torch.nn.functional, forward+backward),
``threads`` (torch.set_num_threads(1) vs the default on the lessons' model sizes),
``widgets`` (redraw latency, updates per second, probe overhead), ``grader`` (100
submissions), ``install`` (a fresh venv with requirements.txt). Not part of the test command:
timings are measurements, not pass/fail tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .build import ROOT

__all__ = [
    "time_call",
    "bench_notebooks",
    "bench_reference",
    "bench_threads",
    "bench_install",
    "main",
]

SECTIONS = ("notebooks", "reference", "threads", "ensemble", "widgets", "grader", "install")


def time_call(fn: Callable[[], object], repeat: int = 5, min_time: float = 0.05) -> float:
    """Median seconds of one call of ``fn`` (each sample loops until ``min_time`` has passed)."""
    fn()  # warm-up: first calls pay for allocation and dispatch caches
    samples = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return statistics.median(samples)


# ----------------------------------------------------------------------------- notebooks
def bench_notebooks(
    repeat: int = 3, folder: Path = ROOT / "solutions"
) -> list[tuple[str, float, float]]:
    """Each notebook's execution time from a fresh kernel: [(name, median s, max s)]."""
    from .static import execute_notebook

    rows = []
    with tempfile.TemporaryDirectory() as out:
        for path in sorted(folder.glob("*.ipynb")):
            times = [execute_notebook(path, Path(out) / path.name) for _ in range(repeat)]
            rows.append((path.name, statistics.median(times), max(times)))
            print(f"  {path.name}: median {rows[-1][1]:.1f} s", flush=True)
    return rows


# ----------------------------------------------------------------------------- reference
_SIZES = [(64, 100), (256, 512), (32, 16, 28, 28), (256, 64, 32, 32)]


def _ops(shape):
    """(name, numpy fwd+bwd, reference-module fwd+bwd, torch fwd+bwd) callables for one shape."""
    from .reference import functional as RF
    from .reference import modules as RM

    F = torch.nn.functional
    c = shape[1]
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=shape).astype(np.float32)
    g_np = rng.normal(size=shape).astype(np.float32)
    x = torch.from_numpy(x_np.copy()).requires_grad_()
    g = torch.from_numpy(g_np.copy())
    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    last = shape[1:] if len(shape) == 2 else shape[-1:]
    groups = 4 if c % 4 == 0 else 1

    def torch_bwd(fn):
        def run():
            x.grad = None
            fn().backward(g)

        return run

    def mod_bwd(mod):
        mod.train()
        return torch_bwd(lambda: mod(x))

    ops = [
        (
            "batch_norm",
            lambda: (
                RF.batch_norm(
                    x_np, None, None, np.ones(c, np.float32), np.zeros(c, np.float32), training=True
                ),
                RF.batch_norm_backward(g_np, x_np, np.ones(c, np.float32)),
            ),
            mod_bwd(
                RM.BatchNorm1d(c, track_running_stats=False)
                if len(shape) == 2
                else RM.BatchNorm2d(c, track_running_stats=False)
            ),
            torch_bwd(lambda: F.batch_norm(x, rm, rv, w, b, training=True)),
        ),
        (
            "layer_norm",
            lambda: (RF.layer_norm(x_np, last), RF.layer_norm_backward(g_np, x_np, last)),
            mod_bwd(RM.LayerNorm(list(last))),
            torch_bwd(lambda: F.layer_norm(x, list(last), torch.ones(last), torch.zeros(last))),
        ),
        (
            "group_norm",
            lambda: (RF.group_norm(x_np, groups), RF.group_norm_backward(g_np, x_np, groups)),
            mod_bwd(RM.GroupNorm(groups, c)),
            torch_bwd(lambda: F.group_norm(x, groups, w, b)),
        ),
        (
            "rms_norm",
            lambda: (RF.rms_norm(x_np, last), RF.rms_norm_backward(g_np, x_np, last)),
            mod_bwd(RM.RMSNorm(list(last))),
            torch_bwd(lambda: F.rms_norm(x, list(last), torch.ones(last))),
        ),
    ]
    return ops


def bench_reference() -> list[tuple[str, tuple, float, float, float]]:
    """[(op, shape, torch ms, numpy/torch ratio, reference-module/torch ratio)], float32."""
    rows = []
    for shape in _SIZES:
        for name, np_fn, mod_fn, torch_fn in _ops(shape):
            t_torch = time_call(torch_fn)
            t_np = time_call(np_fn)
            t_mod = time_call(mod_fn)
            rows.append((name, shape, 1e3 * t_torch, t_np / t_torch, t_mod / t_torch))
            print(
                f"  {name} {shape}: torch {1e3 * t_torch:.2f} ms, numpy x{t_np / t_torch:.2f}, "
                f"module x{t_mod / t_torch:.2f}",
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------------- threads
def _train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def bench_threads() -> list[tuple[str, float, float]]:
    """Training-step time with 1 thread and with all cores: [(model, ms 1 thread, ms default)]."""
    from .models import make_cnn, make_mlp

    cases = {
        "MLP 4x100, batch 64": (make_mlp(depth=4, width=100, norm="batch"), torch.randn(64, 784)),
        "MLP 3x256, batch 256": (make_mlp(depth=3, width=256, norm="layer"), torch.randn(256, 784)),
        "CNN (8, 16), batch 64": (make_cnn(norm="batch"), torch.randn(64, 1, 28, 28)),
        "CNN (16, 32), batch 128": (
            make_cnn(channels=(16, 32), norm="group"),
            torch.randn(128, 1, 28, 28),
        ),
    }
    before = torch.get_num_threads()
    rows = []
    try:
        for name, (model, x) in cases.items():
            y = torch.randint(0, 10, (len(x),))
            step = _train_step_fn(model, x, y)
            torch.set_num_threads(1)
            one = time_call(step, min_time=0.2)
            torch.set_num_threads(os.cpu_count() or 1)
            many = time_call(step, min_time=0.2)
            rows.append((name, 1e3 * one, 1e3 * many))
            print(
                f"  {name}: {1e3 * one:.2f} ms with 1 thread, {1e3 * many:.2f} ms with "
                f"{os.cpu_count()}",
                flush=True,
            )
    finally:
        torch.set_num_threads(before)
    return rows


# ----------------------------------------------------------------------------- install
def bench_install() -> float:
    """Seconds to make a fresh venv and install requirements.txt and the package into it."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + ["-r", str(ROOT / "requirements.txt")], check=True)
        subprocess.run(pip + ["--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)
        return time.perf_counter() - t


# ----------------------------------------------------------------------------- report
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def report(results: dict, notes: dict[str, str] | None = None) -> str:
    """Markdown for docs/benchmarks.md from the measured ``results``."""
    notes = notes or {}
    cpu = platform.processor() or platform.machine()
    out = [
        "# Benchmarks",
        "",
        f"Measured on {time.strftime('%Y-%m-%d')} on a machine with {os.cpu_count()} CPU cores "
        f"({cpu}), Python {platform.python_version()}, torch {torch.__version__}, by "
        "`python -m course_utils.bench`. Figures are medians; they vary with the machine.",
        "",
    ]
    if "notebooks" in results:
        rows = results["notebooks"]
        total = sum(r[1] for r in rows)
        out += [
            "## Solution notebooks, fresh kernel, median of 3",
            "Budget: each under 45 s, all together under 5 minutes.",
            "",
            _md_table(
                ["notebook", "median (s)", "slowest run (s)", "within 45 s"],
                [
                    [n, f"{m:.1f}", f"{mx:.1f}", "yes" if m < 45 else f"no, +{m - 45:.1f} s"]
                    for n, m, mx in rows
                ],
            ),
            "",
            f"Total: {total:.0f} s ({'within' if total < 300 else 'over'} the 5-minute budget).",
            "",
            notes.get("notebooks", ""),
            "",
        ]
    if "reference" in results:
        out += [
            "## Reference implementations vs torch (CPU, float32, forward + backward)",
            "Ratios are time / torch.nn.functional's time (lower is better). Goals: "
            "reference modules within 2x, NumPy within 5x.",
            "",
            _md_table(
                ["op", "shape", "torch (ms)", "NumPy / torch", "module / torch"],
                [
                    [n, str(s), f"{t:.3f}", f"{a:.2f}", f"{b:.2f}"]
                    for n, s, t, a, b in results["reference"]
                ],
            ),
            "",
            notes.get("reference", ""),
            "",
        ]
    if "threads" in results:
        out += [
            "## Torch threads on the lessons' model sizes (one training step)",
            "",
            _md_table(
                ["model", "1 thread (ms)", f"{os.cpu_count()} threads (ms)", "speed-up"],
                [[n, f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}x"] for n, a, b in results["threads"]],
            ),
            "",
            notes.get("threads", ""),
            "",
        ]
    if "ensemble" in results:
        out += [
            "## Ensemble engine on the lessons' sweeps (`python -m course_utils.bench_ensemble`)",
            "",
            results["ensemble"],
            "",
            notes.get("ensemble", ""),
            "",
        ]
    if "widgets" in results:
        out += ["## Live widgets", "", results["widgets"], "", notes.get("widgets", ""), ""]
    if "grader" in results:
        budgets = {"03": 60.0, "09": 180.0}
        rows = []
        for lesson, (secs, cpu, load) in results["grader"].items():
            budget = budgets.get(lesson)
            verdict = "-" if budget is None else "met" if secs < budget else "missed"
            rows.append(
                [lesson, f"{secs:.1f}", f"{cpu:.1f}", f"{load:.1f}", f"{budget or '-'}", verdict]
            )
        out += [
            "## Grader: 100 solved submissions of one lesson (2 workers, sandboxed)",
            "Budgets: lesson 03 under 60 s, lesson 09 under 180 s (wall time, sandbox start-up "
            "included). CPU time counts the grader and everything it started; the load average "
            "is the machine's before the run (other jobs make wall time longer).",
            "",
            _md_table(
                ["lesson", "seconds", "CPU seconds", "load average", "budget (s)", "budget"], rows
            ),
            "",
            notes.get("grader", ""),
            "",
        ]
    if "install" in results:
        secs = results["install"]
        out += [
            "## Fresh install",
            "",
            f"`python -m venv` + `pip install -r requirements.txt` + "
            f"the package: {secs:.0f} s (budget 180 s: {'met' if secs < 180 else 'missed'}).",
            "",
            notes.get("install", ""),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def run(sections: list[str]) -> dict:
    """Run the named sections; return their raw results."""
    results: dict = {}
    for section in sections:
        print(f"[{section}]", flush=True)
        if section == "notebooks":
            results[section] = bench_notebooks()
        elif section == "reference":
            results[section] = bench_reference()
        elif section == "threads":
            results[section] = bench_threads()
        elif section == "ensemble":
            from .bench_ensemble import markdown

            results[section] = markdown()
        elif section == "widgets":
            from .widgets.bench import bench_widgets_markdown

            results[section] = bench_widgets_markdown()
        elif section == "grader":
            from .bench_grader import measure_grader

            # lesson 00 is the smallest; 03 a typical one; 09 trains a model per submission
            results[section] = {}
            for lesson in ("00", "03", "09"):
                load = os.getloadavg()[0]
                secs, cpu = measure_grader(100, lesson=lesson)
                results[section][lesson] = (secs, cpu, load)
                print(f"  lesson {lesson}: {secs:.1f} s ({cpu:.1f} s CPU) for 100", flush=True)
        elif section == "install":
            results[section] = bench_install()
    return results


NOTES_FILE = ROOT / "docs" / "benchmark_notes.md"


def _notes() -> dict[str, str]:
    """Hand-written analysis per section (profiles, reasons for misses), kept between runs."""
    if not NOTES_FILE.exists():
        return {}
    notes, key = {}, None
    for line in NOTES_FILE.read_text().splitlines():
        if line.startswith("## "):
            key = line[3:].strip()
            notes[key] = ""
        elif key:
            notes[key] += line + "\n"
    return {k: v.strip() for k, v in notes.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the course's benchmarks.")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="sections to run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    results = run(list(args.only or SECTIONS))
    text = report(results, _notes())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
