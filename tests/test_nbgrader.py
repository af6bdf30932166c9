"""nbgrader, for real: the exported assignments fail wrong and blank answers.

The slow test runs nbgrader itself (installed from requirements-dev.txt): generate_assignment,
then autograde on a solved, a blank and a partly wrong student for lessons 03 and 06, and
validate on the blank ones (and on the solved 06).
"""

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from course_utils import nbgrader as N
from course_utils.exercises.cases import VISIBLE_SEED
from course_utils.exercises.notebook import assert_passes
from course_utils.exercises.registry import get_exercise, lesson_exercises

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261126
# one exercise made wrong per lesson, by a mistake a learner makes: (grade id, old, new)
MISTAKES = {
    "03_batch_norm": (
        "ex03_batch_norm_backward",
        "return dx, dgamma, dbeta",
        "return 2 * dx, dgamma, dbeta",
    ),
    "06_layer_norm_and_rms_norm": (
        "ex06_rms_norm_forward",
        "(x ** 2).mean(axis=-1, keepdims=True)",
        "x.var(axis=-1, keepdims=True)",
    ),
}


def _nbg(cell):
    return cell["metadata"].get("nbgrader", {})


def _src(cell):
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    return course, N.export(course, SEED)


def test_every_lesson_with_exercises_is_exported_with_its_points(exported):
    course, written = exported
    assert (course / "nbgrader_config.py").exists()
    for path in written:
        nb = json.loads(path.read_text())
        lesson = nb["metadata"]["course"]["lesson"]
        exercises = lesson_exercises(lesson)
        tests = {_nbg(c)["grade_id"]: c for c in nb["cells"] if _nbg(c).get("grade")}
        assert sorted(tests) == sorted(N.grade_id(ex.id, "_tests") for ex in exercises)
        for ex in exercises:
            cell = tests[N.grade_id(ex.id, "_tests")]
            assert _nbg(cell)["points"] == ex.points and _nbg(cell)["locked"]
            src = _src(cell)
            visible, hidden = src.split(N.HIDDEN_BEGIN)
            assert f'assert_passes("{ex.id}", {ex.name})' in visible
            assert f"hidden_seed={SEED}" in hidden and hidden.strip().endswith(N.HIDDEN_END)
        solutions = [c for c in nb["cells"] if _nbg(c).get("solution")]
        assert {c["metadata"]["course"]["exercise"] for c in solutions} <= {
            ex.id for ex in exercises
        }
        assert all("### BEGIN SOLUTION" in _src(c) for c in solutions)
        ids = [_nbg(c)["grade_id"] for c in nb["cells"] if _nbg(c)]
        assert len(ids) == len(set(ids))
        assert all(_nbg(c)["schema_version"] == 3 for c in nb["cells"] if _nbg(c))
        assert not any("progress" in c["metadata"].get("tags", []) for c in nb["cells"])
        assert not any(c.get("outputs") for c in nb["cells"])
        setup = [c for c in nb["cells"] if "setup" in c["metadata"].get("tags", [])]
        assert setup and all(_nbg(c)["locked"] for c in setup)
    assert {p.parent.name for p in written} >= {"03_batch_norm", "06_layer_norm_and_rms_norm"}


def test_a_lesson_whose_exercise_has_no_check_cell_is_refused():
    nb = json.loads((ROOT / "solutions" / "06_layer_norm_and_rms_norm.ipynb").read_text())
    nb["cells"] = [c for c in nb["cells"] if "06.LayerNorm" not in _src(c)]
    with pytest.raises(ValueError, match="no check cell for 06.LayerNorm"):
        N.nbgrader_notebook(nb, SEED)


def test_command_line_export_and_bad_lesson(tmp_path):
    run = [sys.executable, "-m", "course_utils.nbgrader", "export"]
    out = subprocess.run([*run, str(tmp_path), "--lessons", "6"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "seed" in out.stdout
    assert [p.name for p in (tmp_path / "source").iterdir()] == ["06_layer_norm_and_rms_norm"]
    out = subprocess.run([*run, str(tmp_path / "x"), "--lessons", "42"], capture_output=True)
    assert out.returncode == 2


# ------------------------------------------------------------------------------------------
# the raising form of the check
# ------------------------------------------------------------------------------------------


def test_assert_passes_raises_unless_the_answer_passes():
    ex = get_exercise("06.rms_norm_forward")
    right = ex.reference()
    assert assert_passes(ex.id, right).passed
    assert assert_passes(ex.id, right, hidden_seed=3).passed

    def blank(x, weight, eps=1e-6):
        raise NotImplementedError

    def wrong(x, weight, eps=1e-6):
        return right(x, weight, eps) * 1.01

    for obj in (blank, wrong, None):
        for seed in (None, 3):
            with pytest.raises(AssertionError, match="06.rms_norm_forward"):
                assert_passes(ex.id, obj, hidden_seed=seed)
    with pytest.raises(AssertionError, match="no exercise"):
        assert_passes("06.nope", right)


def test_memorised_visible_answers_fail_the_hidden_tests():
    ex = get_exercise("06.rms_norm_forward")
    right = ex.reference()
    visible = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    shapes = {np.shape(c.args[0]) for c in visible}

    def memorised(x, weight, eps=1e-6):
        return right(x, weight, eps) if np.shape(x) in shapes else np.zeros_like(x)

    assert assert_passes(ex.id, memorised).passed
    with pytest.raises(AssertionError, match="hidden test"):
        assert_passes(ex.id, memorised, hidden_seed=SEED)


# ------------------------------------------------------------------------------------------
# nbgrader itself
# ------------------------------------------------------------------------------------------


def _nbgrader(course: Path, *args: str) -> str:
    # nbgrader runs the `alembic` command of its environment to create a gradebook: put the
    # environment's bin folder first on PATH, as activating it would
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"nbgrader {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def _students(course: Path, assignment: str) -> dict[str, float]:
    """Write a solved, a blank and a partly wrong submission; return each one's expected score."""
    source = json.loads((course / "source" / assignment / f"{assignment}.ipynb").read_text())
    release = json.loads((course / "release" / assignment / f"{assignment}.ipynb").read_text())
    answers = {_nbg(c)["grade_id"]: _src(c) for c in source["cells"] if _nbg(c).get("solution")}
    wrong_id, old, new = MISTAKES[assignment]
    total = sum(_nbg(c)["points"] for c in source["cells"] if _nbg(c).get("grade"))
    lost = sum(
        ex.points for ex in lesson_exercises(assignment[:2]) if N.grade_id(ex.id) == wrong_id
    )
    expected = {}
    for student in ("solved", "blank", "partial"):
        nb = copy.deepcopy(release)
        for cell in nb["cells"]:
            gid = _nbg(cell).get("grade_id")
            if _nbg(cell).get("solution") and student != "blank":
                cell["source"] = answers[gid]
                if student == "partial" and gid == wrong_id:
                    assert old in answers[gid]
                    cell["source"] = answers[gid].replace(old, new)
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        (folder / f"{assignment}.ipynb").write_text(json.dumps(nb))
        expected[student] = {"solved": total, "blank": 0.0, "partial": total - lost}[student]
    assert 0 < expected["partial"] < total
    return expected


def _scores(course: Path, assignment: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s: gb.find_submission(assignment, s).score for s in ("solved", "blank", "partial")}


def _grade_one_lesson(course: Path, assignment: str) -> tuple[dict, dict, str, str | None]:
    _nbgrader(course, "generate_assignment", assignment)
    expected = _students(course, assignment)
    _nbgrader(course, "autograde", assignment, "--create")
    released = course / "release" / assignment / f"{assignment}.ipynb"
    blank = _nbgrader(course, "validate", str(released))
    passing = None
    if assignment.startswith("06"):  # the quicker lesson: validating a solved 03 adds 20 s
        solved = course / "submitted" / "solved" / assignment / f"{assignment}.ipynb"
        passing = _nbgrader(course, "validate", str(solved))
    return expected, _scores(course, assignment), blank, passing


@pytest.mark.slow
def test_nbgrader_scores_solved_blank_and_partly_wrong_students(tmp_path):
    jobs = {}
    for assignment in MISTAKES:
        course = tmp_path / assignment
        N.export(course, SEED, lessons=[assignment[:2]])
        jobs[assignment] = course
    # one course folder (and gradebook) per lesson, so the two lessons grade side by side
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(jobs, pool.map(_grade_one_lesson, jobs.values(), jobs.keys())))
    for assignment, (expected, scores, blank, passing) in results.items():
        assert scores == pytest.approx(expected), assignment
        assert "VALIDATION FAILED" in blank and "Success!" not in blank, assignment
        if passing is not None:
            assert "Success! Your notebook passes all the tests." in passing, assignment
