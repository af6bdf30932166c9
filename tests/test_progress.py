import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import build as b
from course_utils.progress import format_progress, lesson_progress

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "00_start_here.ipynb"


def _with_answer(tmp_path, body: str) -> Path:
    nb = b.build_notebook(json.loads(SOLUTION.read_text()))
    for cell in nb["cells"]:
        if cell.get("metadata", {}).get("course", {}).get("exercise") == "00.standardize_columns":
            cell["source"] = f"def standardize_columns(x, eps=1e-5):\n{body}\n"
    path = tmp_path / "my_copy.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_solved_blank_broken_and_endless(tmp_path):
    solved = tmp_path / "solved.ipynb"
    shutil.copy(SOLUTION, solved)
    blank = tmp_path / "blank.ipynb"
    blank.write_text(b.notebook_text(b.build_notebook(json.loads(SOLUTION.read_text()))))
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    broken = _with_answer(tmp_path / "b", "    return x - x.mean(0)")
    endless = _with_answer(tmp_path / "c", "    while True:\n        pass")
    rows = lesson_progress([solved, blank, broken, endless], timeout=3)
    status = [r.exercises["00.standardize_columns"][0] for r in rows]
    assert status == ["passed", "not started", "failed", "failed"]
    assert "wrong values" in rows[2].exercises["00.standardize_columns"][1]
    assert "time" in rows[3].exercises["00.standardize_columns"][1].lower()
    text = format_progress(rows, verbose=True)
    assert "1/1 passed" in text and "0/1 passed" in text


def test_progress_command_lists_every_lesson():
    out = subprocess.run(
        [sys.executable, "-m", "course_utils.progress", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    lessons = sorted(p.name for p in (ROOT / "lessons").glob("*.ipynb"))
    assert sorted(Path(r["path"]).name for r in rows) == lessons
    # the shipped lessons are blank: nothing is passed, every exercise is listed
    for r in rows:
        assert r["exercises"], r["path"]
        assert all(s == "not started" for s, _ in r["exercises"].values()), r


@pytest.mark.parametrize("bad", ["{not json", ""])
def test_unreadable_notebook_does_not_stop_the_report(tmp_path, bad):
    p = tmp_path / "x.ipynb"
    p.write_text(bad)
    good = tmp_path / "solved.ipynb"
    shutil.copy(SOLUTION, good)
    rows = lesson_progress([p, good], timeout=5)
    assert rows[1].exercises["00.standardize_columns"][0] == "passed"
