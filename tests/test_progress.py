import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import build as b
from course_utils.lesson_files import LessonFolderError, learners_folder
from course_utils.progress import format_progress, lesson_progress, main, unsaved_exercises

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


def test_the_command_reports_the_learners_copy_not_the_install(tmp_path):
    """As on JupyterHub: lessons/ copied into a home folder, lesson 00 solved there."""
    home = tmp_path / "home"
    shutil.copytree(ROOT / "lessons", home / "lessons")
    shutil.copy(SOLUTION, home / "lessons" / "00_start_here.ipynb")
    (home / "lessons" / "00_start_here.backup-20260101-000000.ipynb").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "course_utils.progress", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    lessons = sorted(p.name for p in (ROOT / "lessons").glob("*.ipynb"))
    assert [Path(r["path"]) for r in rows] == [home / "lessons" / name for name in lessons]
    assert all(s == "passed" for s, _ in rows[0]["exercises"].values())
    # the other lessons are as shipped: blank, every exercise listed and not started
    for r in rows[1:]:
        assert r["exercises"], r["path"]
        assert all(s == "not started" for s, _ in r["exercises"].values()), r


def test_the_folder_is_where_the_learner_is(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "lessons").mkdir(parents=True)
    shutil.copy(SOLUTION, home / "lessons" / "00_start_here.ipynb")
    assert learners_folder(cwd=home) == home / "lessons"
    assert learners_folder(cwd=home / "lessons") == home / "lessons"
    with pytest.raises(LessonFolderError, match="no course lessons"):
        learners_folder(cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2  # a clear message, no report of the install's lessons
    assert main([str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("bad", ["{not json", ""])
def test_unreadable_notebook_does_not_stop_the_report(tmp_path, bad):
    p = tmp_path / "x.ipynb"
    p.write_text(bad)
    good = tmp_path / "solved.ipynb"
    shutil.copy(SOLUTION, good)
    rows = lesson_progress([p, good], timeout=5)
    assert rows[1].exercises["00.standardize_columns"][0] == "passed"


# ------------------------------------------------------------------------------------------
# unsaved changes: the kernel ran code the saved file does not hold
# ------------------------------------------------------------------------------------------

SOLVED_CELL = next(
    "".join(c["source"])
    for c in json.loads(SOLUTION.read_text())["cells"]
    if c["metadata"].get("course", {}).get("exercise") == "00.standardize_columns"
)


def test_unsaved_exercises_compares_what_ran_with_the_saved_cell():
    solved = json.loads(SOLUTION.read_text())
    blank = b.build_notebook(solved)
    assert unsaved_exercises(blank, "00", [SOLVED_CELL, "check(...)"]) == ["standardize_columns"]
    assert unsaved_exercises(solved, "00", ["import numpy", SOLVED_CELL + "\n\n"]) == []
    assert unsaved_exercises(solved, "00", []) == []  # nothing run yet: nothing to report
    edited = SOLVED_CELL.replace("mean = x.mean(axis=0)", "mean = x.mean(0)")
    assert unsaved_exercises(solved, "00", [edited]) == ["standardize_columns"]
    # the last definition the kernel ran counts
    assert unsaved_exercises(solved, "00", [edited, SOLVED_CELL]) == []


def _run_in_kernel(kc, code: str) -> str:
    out = []

    def hook(msg):
        content = msg["content"]
        if msg["msg_type"] == "stream":
            out.append(content["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(content["traceback"]))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=120)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def test_show_in_a_kernel_says_when_the_notebook_is_not_saved(tmp_path):
    from jupyter_client.manager import start_new_kernel

    lesson = tmp_path / "00_start_here.ipynb"
    lesson.write_text(b.notebook_text(b.build_notebook(json.loads(SOLUTION.read_text()))))
    env = {**os.environ, "JPY_SESSION_NAME": str(lesson)}  # what Jupyter tells the kernel
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        _run_in_kernel(kc, "import numpy as np")
        _run_in_kernel(kc, SOLVED_CELL)  # solved in the kernel, not saved
        text = _run_in_kernel(kc, 'from course_utils.progress import show\nshow("00")')
        assert "0/1 passed" in text and "Unsaved changes" in text and "Ctrl+S" in text
        shutil.copy(SOLUTION, lesson)  # saved
        text = _run_in_kernel(kc, 'show("00")')
        assert "1/1 passed" in text and "Unsaved" not in text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
