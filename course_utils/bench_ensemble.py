"""Benchmark of the ensemble engine on the sweeps the notebooks run (docs/benchmarks.md).

Each workload is the exact call a lesson makes (lesson 04's batch-size and ghost sweeps,
lesson 05's regularization experiment, lesson 06's RNN sweep, lesson 07's CNN and MLP sweeps).
Every run is a fresh process (so that its peak memory is its own), the workloads take turns (so
that a busy moment slows all alike), and the figures are medians of CPU time (user + system),
which a busy machine inflates far less than wall time.

    python -m course_utils.bench_ensemble [--repeat 3] [--tree PATH] [--only NAME ...]

``--tree PATH`` runs the same calls on another checkout of the course (for example the
commit before the engine, whose sweeps ran on hand-written NumPy and stacked-tensor
ensembles): the lessons call the same functions with the same arguments there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

__all__ = ["WORKLOADS", "run_once", "markdown", "main"]

#: name -> (lesson, the call, what it trains)
WORKLOADS = {
    "04 batch-size sweep": (
        "small_batch",
        "sb.batch_size_sweep(sizes=(64, 16, 4, 2), kinds=('batch', 'layer', 'group', 'renorm'),"
        " seeds=(0, 1, 2), samples=3000)",
        "4 x 36 MLPs, 2,483 steps",
    ),
    "04 ghost sweep": (
        "small_batch",
        "sb.ghost_sweep(ghost_sizes=(16, 4, 2), batch_size=64, seeds=(0, 1, 2), samples=3000)",
        "3 x 9 MLPs, 138 steps",
    ),
    "05 regularization": (
        "small_batch",
        "sb.regularization_experiment(n_train=500, epochs=25, batch_size=32, dropout=0.3)",
        "36 MLPs, 390 steps",
    ),
    "06 RNN sweep": (
        "sequence",
        "sq.rnn_sweep(norms=('none', 'layer', 'rms'), gains=(1.0, 3.0),"
        " lrs=(0.003, 0.01, 0.03, 0.1), seeds=(0, 1), steps=200)",
        "48 RNNs, 200 steps of 12 time steps",
    ),
    "07 CNN sweep": (
        "group_norm",
        "gn.cnn_batch_size_sweep(sizes=(32, 8, 2), arms=('batch', 'group2'), seeds=(0, 1),"
        " samples=2000, channels=(4, 8), base_lrs={'batch': (0.01, 0.03, 0.1),"
        " 'group2': (0.03, 0.1, 0.3)}, precise_at=(2,))",
        "3 x 12 CNNs, 1,312 steps",
    ),
    "07 MLP sweep": (
        "small_batch",
        "sb.batch_size_sweep(sizes=(32, 8, 2), kinds=('batch', 'group'), seeds=(0, 1, 2),"
        " samples=3000)",
        "3 x 18 MLPs, 1,968 steps",
    ),
}

_CHILD = """
import json, resource, sys, time
import course_utils
from course_utils.experiments import group_norm as gn, sequence as sq, small_batch as sb
sb.mnist14(); sb.mnist14(images=True)
def usage():
    # VmHWM is this process's own peak; ru_maxrss keeps the parent's across fork + exec
    r = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        rss = r.ru_maxrss / 1024
    return r.ru_utime + r.ru_stime, rss
cpu0, rss0 = usage(); t0 = time.perf_counter()
{call}
cpu1, rss1 = usage()
print(json.dumps({{"cpu": cpu1 - cpu0, "wall": time.perf_counter() - t0, "rss": rss1,
                  "rss_before": rss0}}))
"""


def run_once(name: str, tree: str | None = None) -> dict:
    """Run workload ``name`` in a fresh process (code from ``tree`` if given); returns its CPU
    seconds, wall seconds and peak resident memory (MB), before and after."""
    _, call, _ = WORKLOADS[name]
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.path.abspath(tree)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(call=call)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tree or None,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(repeat: int = 3, names: list[str] | None = None, tree: str | None = None) -> str:
    """Run the workloads ``repeat`` times each, in turn; a markdown table of the medians."""
    names = names or list(WORKLOADS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(repeat):  # round robin: a busy moment slows every workload alike
        for n in names:
            runs[n].append(run_once(n, tree))
    rows = [
        "| workload | trains | CPU s (median) | wall s (median) | peak RSS MB (+ over imports) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in names:
        cpu = statistics.median(r["cpu"] for r in runs[n])
        wall = statistics.median(r["wall"] for r in runs[n])
        rss = max(r["rss"] for r in runs[n])
        extra = max(r["rss"] - r["rss_before"] for r in runs[n])
        rows.append(
            f"| {n} | {WORKLOADS[n][2]} | {cpu:.2f} | {wall:.2f} | {rss:.0f} (+{extra:.0f}) |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", default=None, help="another checkout to run the calls on")
    parser.add_argument("--only", nargs="*", default=None, help="workload names to run")
    args = parser.parse_args(argv)
    print(markdown(args.repeat, args.only, args.tree))


if __name__ == "__main__":
    main()
