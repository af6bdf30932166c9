import json
import shutil

import pytest

from course_utils import build as b
from course_utils import reset as r

SOLVED = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"


@pytest.fixture
def course(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    for n, name in [("00", "00_start_here"), ("03", "03_batch_norm")]:
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "source": SOLVED,
                    "outputs": [],
                    "execution_count": None,
                    "metadata": {"course": {"exercise": f"{n}.f"}},
                }
            ],
            "metadata": {"course": {"lesson": n}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (sol / f"{name}.ipynb").write_text(json.dumps(nb))
    b.build(sol, les, quiet=True)
    return sol, les


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_reset_keeps_learner_work_as_backup(course, tmp_path):
    sol, les = course
    lesson = les / "03_batch_norm.ipynb"
    lesson.write_text('{"my": "work"}')
    before = _all_files(tmp_path)
    backup = r.reset_lesson("3", sol, les)
    after = _all_files(tmp_path)
    assert backup.parent == les and backup.name.startswith("03_batch_norm.backup-")
    assert backup.read_text() == '{"my": "work"}'
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


def test_reset_of_a_missing_lesson_just_writes_it(course):
    sol, les = course
    (les / "00_start_here.ipynb").unlink()
    assert r.reset_lesson("0", sol, les) is None
    assert (les / "00_start_here.ipynb").exists()


@pytest.mark.parametrize(
    "bad", ["7", "99", "../solutions/03_batch_norm.ipynb", "/etc/passwd", "notes.txt", "lessons"]
)
def test_reset_refuses_anything_else(course, bad, monkeypatch, tmp_path):
    sol, les = course
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    before = _all_files(tmp_path)
    with pytest.raises(ValueError):
        r.reset_lesson(bad, sol, les)
    assert _all_files(tmp_path) == before


def test_reset_by_path(course, monkeypatch, tmp_path):
    sol, les = course
    monkeypatch.chdir(tmp_path)
    (les / "00_start_here.ipynb").write_text("mine")
    backup = r.reset_lesson("lessons/00_start_here.ipynb", sol, les)
    assert backup.read_text() == "mine"


def test_course_update_never_loses_an_edited_lesson(course):
    sol, les = course
    (les / "03_batch_norm.ipynb").write_text('{"cells": [], "metadata": {}}')
    shutil.copy(sol / "03_batch_norm.ipynb", sol / "03_batch_norm.ipynb.bak")
    nb = json.loads((sol / "03_batch_norm.ipynb").read_text())
    nb["cells"][0]["source"] += "# updated\n"
    (sol / "03_batch_norm.ipynb").write_text(json.dumps(nb))
    b.build(sol, les, quiet=True)
    backups = list(les.glob("03_batch_norm.backup-*"))
    assert [p.read_text() for p in backups] == ['{"cells": [], "metadata": {}}']
