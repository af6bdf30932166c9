import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import build as b
from course_utils import reset as r

ROOT = Path(__file__).resolve().parents[1]
SOLVED = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"


def _solution(n: str, source: str = SOLVED) -> dict:
    return {
        "cells": [
            {
                "cell_type": "code",
                "source": source,
                "outputs": [],
                "execution_count": None,
                "metadata": {"course": {"exercise": f"{n}.f"}},
            }
        ],
        "metadata": {"course": {"lesson": n}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.fixture
def course(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    for n, name in [("00", "00_start_here"), ("03", "03_batch_norm")]:
        (sol / f"{name}.ipynb").write_text(json.dumps(_solution(n)))
    b.build(sol, les, quiet=True)
    return sol, les


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_reset_keeps_learner_work_as_backup(course, tmp_path):
    sol, les = course
    lesson = les / "03_batch_norm.ipynb"
    lesson.write_text('{"my": "work"}')
    before = _all_files(tmp_path)
    done = r.reset_lesson("3", sol, les)
    after = _all_files(tmp_path)
    assert done.path == lesson and done.written
    assert done.backup.parent == les and done.backup.name.startswith("03_batch_norm.backup-")
    assert done.backup.read_text() == '{"my": "work"}'
    # no file lost: everything that was there is still there, byte for byte (the lesson moved)
    moved = {k: v for k, v in before.items() if k != lesson.relative_to(tmp_path)}
    assert all(after[k] == v for k, v in moved.items())
    assert "NotImplementedError" in lesson.read_text()


def test_two_resets_make_two_backups(course):
    sol, les = course
    (les / "03_batch_norm.ipynb").write_text("first")
    r.reset_lesson("03", sol, les)
    (les / "03_batch_norm.ipynb").write_text("second")
    r.reset_lesson("03", sol, les)
    texts = sorted(p.read_text() for p in les.glob("03_batch_norm.backup-*"))
    assert len(texts) == 2 and "first" in texts and "second" in texts


def test_no_backup_of_a_file_that_holds_nothing_of_the_learner(course):
    sol, les = course
    lesson = les / "03_batch_norm.ipynb"
    fresh = lesson.read_bytes()
    for _ in range(3):  # resetting a fresh copy: nothing written, nothing backed up
        done = r.reset_lesson("03", sol, les)
        assert done.backup is None and not done.written and lesson.read_bytes() == fresh
    # a course update: the learner's untouched copy of the old version needs no backup either
    (sol / "03_batch_norm.ipynb").write_text(json.dumps(_solution("03", SOLVED + "# v2\n")))
    done = r.reset_lesson("03", sol, les)
    assert done.backup is None and done.written and "# v2" in lesson.read_text()
    assert not list(les.glob("*.backup-*"))


def test_reset_of_a_missing_lesson_just_writes_it(course):
    sol, les = course
    (les / "00_start_here.ipynb").unlink()
    done = r.reset_lesson("0", sol, les)
    assert done.backup is None and done.written
    assert (les / "00_start_here.ipynb").exists()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("7", "there is no lesson 7"),
        ("99", "there is no lesson 99"),
        ("003", "two digits"),
        ("../solutions/03_batch_norm.ipynb", "solution notebook"),
        ("/etc/passwd", "not one of the course's lessons"),
        ("notes.txt", "not one of the course's lessons"),
        ("lessons", "not one of the course's lessons"),
        ("03_batch_norm", "not one of the course's lessons"),
    ],
)
def test_reset_refuses_anything_else_and_says_why(course, bad, says, monkeypatch, tmp_path):
    sol, les = course
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(les)
    before = _all_files(tmp_path)
    with pytest.raises(r.ResetError, match=says) as err:
        r.reset_lesson(bad, sol)
    assert "00_start_here" in str(err.value) or "solution" in str(err.value)
    assert _all_files(tmp_path) == before


def test_reset_by_path_anywhere(course, tmp_path, monkeypatch):
    sol, _ = course
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    (home / "00_start_here.ipynb").write_text("mine")
    monkeypatch.chdir(tmp_path)
    done = r.reset_lesson("home/alice/00_start_here.ipynb", sol)
    assert done.path == home / "00_start_here.ipynb"
    assert done.backup.read_text() == "mine"


def test_a_folder_without_lessons_gets_a_clear_error(course, tmp_path, monkeypatch):
    sol, _ = course
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(r.ResetError, match="no course lessons in"):
        r.reset_lesson("03", sol)
    assert not any(empty.iterdir())


def test_course_update_never_loses_an_edited_lesson(course):
    sol, les = course
    (les / "03_batch_norm.ipynb").write_text('{"cells": [], "metadata": {}}')
    nb = json.loads((sol / "03_batch_norm.ipynb").read_text())
    nb["cells"][0]["source"] += "# updated\n"
    (sol / "03_batch_norm.ipynb").write_text(json.dumps(nb))
    b.build(sol, les, quiet=True)
    backups = list(les.glob("03_batch_norm.backup-*"))
    assert [p.read_text() for p in backups] == ['{"cells": [], "metadata": {}}']


# ------------------------------------------------------------------------------------------
# the command, on a learner's copy of the real course (as on JupyterHub: lessons/ copied home)
# ------------------------------------------------------------------------------------------


def _reset(cwd: Path, *args: str, wrap: list[str] | None = None):
    return subprocess.run(
        [*(wrap or []), sys.executable, "-m", "course_utils.reset", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def learner(tmp_path):
    """A learner's home with a copy of the course's lessons, lesson 03 worked on."""
    home = tmp_path / "home"
    shutil.copytree(ROOT / "lessons", home / "lessons")
    mine = home / "lessons" / "03_batch_norm.ipynb"
    nb = json.loads(mine.read_text())
    nb["cells"][0]["source"] = "# my notes\n" + "".join(nb["cells"][0]["source"])
    mine.write_text(json.dumps(nb))
    return home


def _install_lessons():
    files = (ROOT / "lessons").glob("*.ipynb")
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.parametrize("where", ["home", "home/lessons"])
def test_the_command_resets_the_learners_copy_not_the_install(learner, where):
    install = _install_lessons()
    mine = learner / "lessons" / "03_batch_norm.ipynb"
    work = mine.read_text()
    out = _reset(learner.parent / where, "03")
    assert out.returncode == 0, out.stderr
    assert str(mine) in out.stdout
    backups = list(mine.parent.glob("03_batch_norm.backup-*.ipynb"))
    assert [p.read_text() for p in backups] == [work]
    assert mine.read_bytes() == (ROOT / "lessons" / "03_batch_norm.ipynb").read_bytes()
    assert _install_lessons() == install  # the course's own copy untouched
    out = _reset(learner.parent / where, "03")  # again: the copy is fresh, so no new backup
    assert out.returncode == 0 and "already a fresh copy" in out.stdout
    assert len(list(mine.parent.glob("03_batch_norm.backup-*.ipynb"))) == 1


def test_bad_lesson_names_get_a_message_not_a_traceback(learner):
    out = _reset(learner, "003")
    assert out.returncode == 2
    assert "two digits" in out.stderr and "Traceback" not in out.stderr


def test_a_read_only_folder_gets_a_message_and_loses_nothing(learner):
    lessons = learner / "lessons"
    before = _all_files(lessons)
    wrap = None
    if os.geteuid() == 0:  # root writes through file modes: use a read-only mount instead
        if not shutil.which("bwrap"):
            pytest.skip("running as root without bubblewrap: cannot make a read-only folder")
        wrap = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(lessons), str(lessons), "--"]
    else:
        lessons.chmod(0o555)
    try:
        out = _reset(learner, "03", wrap=wrap)
    finally:
        lessons.chmod(0o755)
    assert out.returncode == 2, out.stdout
    assert "read-only" in out.stderr and "Traceback" not in out.stderr
    assert _all_files(lessons) == before
