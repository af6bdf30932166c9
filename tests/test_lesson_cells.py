"""What lesson cells show: each central experiment's mechanism in plain torch before the helper
runs the sweep; no self-tests of the course's own helpers (those live in tests/); no import
shims for pieces the course ships."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

# lesson -> the call that runs its central experiment's full sweep
CENTRAL = {
    "01": "S.mnist_lr_sweep(",
    "02": "C.figure1(",
    "03": "B.lr_sweep(",
    "04": "sb.batch_size_sweep(",
    "06": "sq.rnn_sweep(",
    "07": "gn.cnn_batch_size_sweep(",
    "08": "transformer.train_reversal(",
    "09": "practice.norm_lr_sweep(",
}
SELF_TEST = re.compile(r"\w+_matches_(torch|module)\(")
SHIM = re.compile(r"except ImportError|getattr\(RM\b")


def _solution(lesson: str) -> nbformat.NotebookNode:
    (path,) = ROOT.glob(f"solutions/{lesson}_*.ipynb")
    return nbformat.read(path, as_version=4)


def _demo_cells(nb):
    """Code cells that are not the learner's exercises."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "code" and "exercise" not in c.metadata.get("tags", [])
    ]


def _is_training_loop(source: str) -> bool:
    return (
        re.search(r"^\s*for .+:\s*(#.*)?$", source, re.M) is not None
        and ".backward()" in source
        and re.search(r"\bopt\.step\(\)", source) is not None
    )


@pytest.mark.parametrize("lesson", sorted(CENTRAL))
def test_the_central_experiment_shows_one_arm_in_plain_torch_first(lesson):
    cells = _demo_cells(_solution(lesson))
    helper = next(i for i, c in enumerate(cells) if CENTRAL[lesson] in c.source)
    loops = [i for i, c in enumerate(cells[:helper]) if _is_training_loop(c.source)]
    assert loops, f"lesson {lesson}: no plain-torch training loop before {CENTRAL[lesson]}"
    loop = cells[loops[-1]].source
    assert len(loop.strip().splitlines()) <= 20, f"lesson {lesson}: the loop cell is long"


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("solutions/[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2]
)
def test_no_cell_runs_a_self_test_of_the_course_or_an_import_shim(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not SELF_TEST.search(cell.source), f"{path.name} cell {i}: a helper's self-test"
        assert not SHIM.search(cell.source), f"{path.name} cell {i}: an import shim"
