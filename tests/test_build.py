import json
from pathlib import Path

import pytest

from course_utils import build as b

ROOT = Path(__file__).resolve().parents[1]

SOLVED = '''def f(x):
    """Doubles x."""
    ### BEGIN SOLUTION
    y = 2 * x
    return y
    ### END SOLUTION
'''


def _nb(cells, lesson="99"):
    return {
        "cells": cells,
        "metadata": {"course": {"lesson": lesson}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _code(src, exercise=None, outputs=None):
    meta = {"course": {"exercise": exercise}} if exercise else {}
    return {
        "cell_type": "code",
        "source": src,
        "metadata": meta,
        "outputs": outputs or [],
        "execution_count": 3,
    }


def test_blank_source_keeps_indentation_and_names_exercise():
    out = b.blank_source(SOLVED, "99.f")
    assert "2 * x" not in out and "BEGIN SOLUTION" not in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="Exercise 99.f"):
        ns["f"](1)
    assert "    raise NotImplementedError" in out and '"""Doubles x."""' in out


@pytest.mark.parametrize(
    "bad",
    [
        "### BEGIN SOLUTION\nx\n",
        "x\n### END SOLUTION\n",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n",
    ],
)
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError):
        b.blank_source(bad, "99.f")


def test_build_notebook_strips_outputs_and_requires_ids():
    out = {"output_type": "stream", "name": "stdout", "text": "hi"}
    nb = b.build_notebook(_nb([_code(SOLVED, "99.f", [out]), _code("print(1)", None, [out])]))
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"])
    assert "2 * x" not in nb["cells"][0]["source"]
    assert nb["metadata"]["course"]["build_hash"] == b.content_hash(nb)
    with pytest.raises(ValueError, match="exercise id"):
        b.build_notebook(_nb([_code(SOLVED)]))


def _write(path, nb):
    path.write_text(json.dumps(nb), encoding="utf-8")


def test_check_detects_stale_lessons_and_build_fixes_them(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED, "99.f")]))
    assert b.build(sol, les, check=True, quiet=True) == [str(les / "99_x.ipynb")]
    b.build(sol, les, quiet=True)
    assert b.build(sol, les, check=True, quiet=True) == []
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED + "# changed\n", "99.f")]))
    assert b.build(sol, les, check=True, quiet=True) == [str(les / "99_x.ipynb")]


def test_rebuild_backs_up_a_lesson_the_learner_edited(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED, "99.f")]))
    b.build(sol, les, quiet=True)
    lesson = les / "99_x.ipynb"
    mine = json.loads(lesson.read_text())
    mine["cells"][0]["source"] = "def f(x):\n    return x + x  # my answer\n"
    lesson.write_text(json.dumps(mine))
    my_text = lesson.read_text()
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED + "# course update\n", "99.f")]))
    b.build(sol, les, quiet=True)
    backups = list(les.glob("99_x.backup-*.ipynb"))
    assert len(backups) == 1 and backups[0].read_text() == my_text
    assert "course update" in lesson.read_text()


def test_rebuild_of_an_unedited_lesson_makes_no_backup(tmp_path):
    sol, les = tmp_path / "solutions", tmp_path / "lessons"
    sol.mkdir()
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED, "99.f")]))
    b.build(sol, les, quiet=True)
    _write(sol / "99_x.ipynb", _nb([_code(SOLVED + "# update\n", "99.f")]))
    b.build(sol, les, quiet=True)
    assert list(les.glob("*.backup-*")) == []


def test_backup_names_never_collide(tmp_path):
    import datetime as dt

    p, now = tmp_path / "a.ipynb", dt.datetime(2026, 1, 2, 3, 4, 5)
    first = b.backup_path(p, now)
    assert first.name == "a.backup-20260102-030405.ipynb"
    first.write_text("x")
    second = b.backup_path(p, now)
    assert second != first and not second.exists()


def test_repository_lessons_are_up_to_date():
    stale = b.build(ROOT / "solutions", ROOT / "lessons", check=True, quiet=True)
    assert stale == [], f"run python -m course_utils.build: {stale}"


def test_repository_lessons_have_no_outputs_or_solutions():
    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            assert "BEGIN SOLUTION" not in cell["source"], path
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], path
