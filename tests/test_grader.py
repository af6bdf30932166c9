"""The grader (``python -m course_utils.grade``).

Every solution notebook gets full marks and its blank lesson 0; each bad or gaming
submission gets 0 for the exercise it breaks (and only that one), with its reason in the
feedback. The matrix is built from every ``solutions/*.ipynb``, so a new lesson is covered
as soon as its solution notebook exists. The test-only lesson "99" (tests/fixtures) has two
exercises, one a class, and checks that a broken exercise never costs the other its points.
"""

from __future__ import annotations

import ast
import base64
import copy
import csv
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from course_utils.build import build_notebook
from course_utils.exercises.cases import VISIBLE_SEED
from course_utils.exercises.core import call_with_args
from course_utils.grade import main as grade_main
from course_utils.grading import grade
from course_utils.grading.grader import default_catalog, make_task
from course_utils.grading.isolation import bwrap_problem
from course_utils.grading.notebooks import read_submission, to_python
from course_utils.grading.scan import scan_cell
from course_utils.sandbox.wire import FrameReader, WireError, decode, encode, send_frame

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
TIMEOUT = 10.0  # the grader's default: solution notebooks must pass under it
SHORT = 3.0  # for the test lesson 99, whose exercises take milliseconds
MEMORY_MB = 512
SEED = 2024  # the hidden tests' seed (the command line's default is the instructor's secret)
# In the bubblewrap sandbox where it runs (CI installs it: .ci/sandbox-deps); elsewhere these
# tests still check the grading itself, unsandboxed (tests/test_grader_attacks.py is skipped).
ISOLATION = "auto"
NO_SANDBOX = [] if bwrap_problem() is None else ["--no-sandbox"]


def _load_lesson99():
    spec = importlib.util.spec_from_file_location("grader_lesson99", FIXTURES / "lesson99.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


L99 = _load_lesson99()


# --------------------------------------------------------------------------------------
# building submissions
# --------------------------------------------------------------------------------------


def _src(cell: dict) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _exercise_index(nb: dict, exercise_id: str) -> int:
    """The cell tagged with the exercise, else the last one defining its name (exercises
    may share a cell, like lesson 09's capstone)."""
    for i, c in enumerate(nb["cells"]):
        if c.get("metadata", {}).get("course", {}).get("exercise") == exercise_id:
            return i
    name = next(
        (
            e.name
            for exs in [*default_catalog().values(), *L99.CATALOG.values()]
            for e in exs
            if e.id == exercise_id
        ),
        exercise_id,
    )
    for i in reversed(range(len(nb["cells"]))):
        c = nb["cells"][i]
        if c["cell_type"] == "code" and re.search(rf"(?m)^(def|class)\s+{name}\b", _src(c)):
            return i
    raise LookupError(exercise_id)


def _with_source(nb: dict, index: int, source: str) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"][index]["source"] = source
    return nb


def _is_class(source: str, name: str) -> bool:
    tree = ast.parse(to_python(source))
    return any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)


def _delegating(source: str, name: str, bad: str) -> str:
    """The solved cell, its object renamed, behind a wrapper that first runs ``bad``."""
    renamed = re.sub(rf"(?m)^(def|class)(\s+){name}\b", rf"\1\2_solved_{name}", source)
    if _is_class(source, name) and "autograd.Function" in source:
        # Function.apply never constructs the class: the bad code goes into forward
        wrapper = (
            f"class {name}(_solved_{name}):\n"
            f"    @staticmethod\n"
            f"    def forward(*args, **kwargs):\n"
            f"{textwrap.indent(bad, ' ' * 8)}\n"
            f"        return _solved_{name}.forward(*args, **kwargs)\n"
        )
    elif _is_class(source, name):
        wrapper = (
            f"class {name}(_solved_{name}):\n"
            f"    def __init__(self, *args, **kwargs):\n"
            f"{textwrap.indent(bad, ' ' * 8)}\n"
            f"        super().__init__(*args, **kwargs)\n"
        )
    else:
        wrapper = (
            f"def {name}(*args, **kwargs):\n"
            f"{textwrap.indent(bad, ' ' * 4)}\n"
            f"    return _solved_{name}(*args, **kwargs)\n"
        )
    return f"{renamed}\n\n\n{wrapper}"


def _has_float_array(args) -> bool:
    return any(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in args)


def _memorised(ex) -> str:
    """A function returning the reference's outputs for the visible cases only."""
    cases = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    memo = {pickle.dumps((c.args, c.kwargs)): ex.expected(copy.deepcopy(c)) for c in cases}
    blob = base64.b64encode(pickle.dumps(memo)).decode()
    return (
        "import base64 as _b64, pickle as _pickle\n"
        f"_MEMO = _pickle.loads(_b64.b64decode('{blob}'))\n\n\n"
        f"def {ex.name}(*args, **kwargs):\n"
        "    return _MEMO.get(_pickle.dumps((args, kwargs)))\n"
    )


# Bad code run at the start of the learner's object, and what the feedback must say.
_RUNTIME_BAD = {
    "loop": ("while True:\n    pass", r"time limit"),
    "os_exit": ("import os\nos._exit(3)", r"exit code 3"),
    "segfault": ("import ctypes\nctypes.string_at(0)", r"segmentation fault"),
    "huge_alloc": ("import numpy\n_big = numpy.ones(10**9)", r"MemoryError"),
    "sys_exit": ("import sys\nsys.exit(0)", r"SystemExit"),
    "answers_runtime": (  # the answers are not in the sandbox at all
        "import importlib, numpy\n"
        "_r = importlib.import_module('course_utils.refer' + 'ence.functional')\n"
        "_r.layer_norm(numpy.ones((2, 3)), (3,))",
        r"raised (ModuleNotFoundError|ImportError)",
    ),
    "patch_runtime": (
        "import numpy as _np\n_orig = _np.sqrt\n"
        "setattr(__import__('num' + 'py'), 'sqrt', lambda *a, **k: _orig(*a, **k))",
        r"patches numpy\.sqrt",
    ),
}
# torch's normalization, called the way a forbidden name of the exercise allows.
_TORCH_CALLS = {
    "layer_norm": "torch.ones(2, 3), (3,)",
    "batch_norm": "torch.ones(2, 3), None, None, training=True",
    "group_norm": "torch.ones(2, 4), 2",
    "instance_norm": "torch.ones(1, 2, 3)",
    "rms_norm": "torch.ones(2, 3), (3,)",
}


def _torch_bad(name: str) -> dict[str, tuple[str, str]]:
    """A static use (in dead code) and a runtime one (hidden from the scan) of F.<name>."""
    args = _TORCH_CALLS[name]
    return {
        "torch_static": (
            f"if False:\n    import torch.nn.functional as F\n    F.{name}({args})",
            rf"uses `F\.{name}`, which is forbidden",
        ),
        "torch_runtime": (
            f"import torch\n_f = getattr(torch.nn.functional, '{name[:3]}' + '{name[3:]}')\n"
            f"_f({args})",
            rf"calls torch\.nn\.functional\.{name}",
        ),
    }


# Code put at the top of the exercise cell (runs when the cell runs).
_CELL_BAD = {
    "cell_os_exit": ("import os\nos._exit(3)\n", r"exercise cell failed: .*exit code 3"),
    "answers_static": (
        "from course_utils.reference import functional as _ref\n",
        r"imports course_utils\.reference\.functional, which holds the course's answers",
    ),
    "patch_static": (
        "import numpy\nnumpy.linalg.norm = lambda *a, **k: 0.0\n",
        r"assigns to numpy\.linalg\.norm \(patching numpy\)",
    ),
}


NOT_FOUND = r"not found: no cell holds exercise"


def _focus(nb: dict, keep: str, exercises: list) -> dict:
    """The notebook with every exercise cell but ``keep``'s removed, so a variant only
    runs the exercise it is about (the others then score 0 as "not found")."""
    drop = {_exercise_index(nb, ex.id) for ex in exercises} - {_exercise_index(nb, keep)}
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for k, c in enumerate(nb["cells"]) if k not in drop]
    return nb


def _variants(
    nb: dict, exercises: list, catalog: dict, with_loop: bool
) -> dict[str, tuple[dict | str, dict[str, str]]]:
    """name -> (notebook or raw text, {exercise id: feedback regex for a 0 score}).

    Exercises not named in the dict must keep full marks; ``{"*": regex}`` means every
    exercise scores 0 with that reason. Apart from "solved" and "blank", each variant keeps
    only the exercise it is about (a lesson that trains models would otherwise take minutes).
    """
    # Aim at a plain function where there is one (cheap, and memorisable); torch's
    # normalization only where the exercise forbids it (forbidden=() allows nn.LayerNorm).
    cells = [_exercise_index(nb, ex.id) for ex in exercises]
    alone = [ex for ex, c in zip(exercises, cells) if cells.count(c) == 1] or exercises
    target = next((ex for ex in alone if ex.run is call_with_args), alone[0])
    strict = next(((ex, n) for ex in alone for n in _TORCH_CALLS if n in ex.forbidden), None)
    names = [e.name for exs in catalog.values() for e in exs]
    unique = next((ex for ex in alone if names.count(ex.name) == 1), None)
    memorable = next(
        (
            ex
            for ex in alone
            if ex.run is call_with_args
            and any(_has_float_array(c.args) for c in ex.cases(np.random.default_rng(0), True))
        ),
        None,
    )

    def variant(ex, source: str | None = None, reason: str | None = None, drop=False):
        one = _focus(nb, ex.id, exercises)
        i = _exercise_index(one, ex.id)
        if drop:
            del one["cells"][i]
        elif source is not None:
            one = _with_source(one, i, source)
        mine = _exercise_index(nb, ex.id)  # exercises sharing ex's cell share its fate
        expect = {e.id: NOT_FOUND for e in exercises if _exercise_index(nb, e.id) != mine}
        for e in exercises:
            if reason is not None and e.id not in expect:
                expect[e.id] = reason
        return one, expect

    solved = _src(nb["cells"][_exercise_index(nb, target.id)])
    out: dict[str, tuple[dict | str, dict[str, str]]] = {
        "solved": (nb, {}),
        "blank": (build_notebook(nb), {"*": r"not attempted: .* still holds the placeholder"}),
        "invalid_json": (json.dumps(nb)[:-200], {"*": r"not valid JSON"}),
        "syntax_error": variant(target, solved + "\n    return (\n", "cell failed: SyntaxError"),
        "renamed": variant(
            target,
            re.sub(rf"\b{target.name}\b", f"{target.name}_v2", solved),
            rf"does not define `{target.name}`",
        ),
        "printing": variant(
            target,
            _delegating(
                solved,
                target.name,
                "import sys\nprint('x' * 5_000_000)\nsys.stderr.write('y' * 5_000_000)",
            ),
        ),
        "deleted": variant(target, reason=NOT_FOUND, drop=True),
    }
    bad_code = [(target, name, bad) for name, bad in _RUNTIME_BAD.items()]
    if strict is not None:
        bad_code += [(strict[0], name, bad) for name, bad in _torch_bad(strict[1]).items()]
    for ex, name, (bad, reason) in bad_code:
        if name == "loop" and not with_loop:
            continue
        src = _src(nb["cells"][_exercise_index(nb, ex.id)])
        out[name] = variant(ex, _delegating(src, ex.name, bad), reason)
    for name, (prefix, reason) in _CELL_BAD.items():
        out[name] = variant(target, prefix + solved, reason)
    if memorable is not None:
        out["memorised"] = variant(
            memorable, _memorised(memorable), r"passes the visible tests but fails hidden ones"
        )
    if unique is not None:  # a name only this lesson uses identifies it on its own
        no_meta, expect = variant(unique)
        no_meta["metadata"] = {}
        for c in no_meta["cells"]:
            c["metadata"] = {}
        out["no_metadata"] = (no_meta, expect)
    ids_only, expect = variant(target)
    ids_only["metadata"] = {}
    out["ids_only"] = (ids_only, expect)
    return out


def _write(folder: Path, name: str, content: dict | str) -> Path:
    path = folder / f"{name}.ipynb"
    text = content if isinstance(content, str) else json.dumps(content, indent=1)
    path.write_text(text, encoding="utf-8")
    return path


def _assert_scores(result, expect: dict[str, str], exercises) -> None:
    by_id = {e.id: e for e in result.exercises}
    assert list(by_id) == [ex.id for ex in exercises], result.to_dict()
    for ex in exercises:
        got = by_id[ex.id]
        assert got.max_score == ex.points
        reason = expect.get(ex.id, expect.get("*"))
        if reason is None:
            assert got.score == ex.points, (result.path, got.feedback)
            assert got.feedback.startswith("passed all"), got.feedback
        else:
            assert got.score == 0, (result.path, got.feedback)
            assert re.search(reason, got.feedback), (result.path, reason, got.feedback)
        assert "\n" not in got.feedback and len(got.feedback) <= 400


# --------------------------------------------------------------------------------------
# every solution notebook: solved, blank, and each bad or gaming submission
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every lesson's variants, graded in one batch (so the time limits overlap)."""
    folder = tmp_path_factory.mktemp("matrix")
    catalog = default_catalog()
    lessons, paths = {}, {}
    for k, sol in enumerate(SOLUTIONS):
        nb = json.loads(sol.read_text(encoding="utf-8"))
        lesson = nb["metadata"]["course"]["lesson"]
        exercises = catalog.get(lesson, [])
        # The time limit works the same for every lesson: one infinite loop is enough.
        variants = _variants(nb, exercises, catalog, with_loop=k == 0) if exercises else {}
        (folder / sol.stem).mkdir()
        for name, (content, _) in variants.items():
            paths[sol.stem, name] = _write(folder / sol.stem, name, content)
        lessons[sol.stem] = (lesson, exercises, variants)
    graded = (
        grade([folder], seed=SEED, timeout=TIMEOUT, memory_mb=MEMORY_MB, isolation=ISOLATION)
        if paths
        else []
    )
    by_path = {r.path: r for r in graded}
    return lessons, {key: by_path[str(p)] for key, p in paths.items()}


@pytest.fixture(params=SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def lesson_matrix(request, matrix):
    lessons, results = matrix
    lesson, exercises, variants = lessons[request.param.stem]
    return lesson, exercises, variants, {n: results[request.param.stem, n] for n in variants}


def test_every_solution_notebook_scores_full_marks(lesson_matrix):
    lesson, exercises, _, results = lesson_matrix
    if not exercises:
        pytest.skip(f"lesson {lesson} has no registered exercises yet")
    res = results["solved"]
    assert res.lesson == lesson and res.score == res.max_score == sum(e.points for e in exercises)
    _assert_scores(res, {}, exercises)


@pytest.mark.parametrize(
    "variant",
    [
        "blank",
        "invalid_json",
        "syntax_error",
        "renamed",
        "deleted",
        "printing",
        *_RUNTIME_BAD,
        "torch_static",
        "torch_runtime",
        *_CELL_BAD,
        "memorised",
        "no_metadata",
        "ids_only",
    ],
)
def test_bad_and_gaming_submissions(lesson_matrix, variant):
    lesson, exercises, variants, results = lesson_matrix
    if not exercises:
        pytest.skip(f"lesson {lesson} has no registered exercises yet")
    if variant not in variants:
        pytest.skip(f"{variant} does not apply to lesson {lesson}'s exercises")
    _, expect = variants[variant]
    res = results[variant]
    assert res.lesson == lesson
    _assert_scores(res, expect, exercises)


def test_lost_metadata_is_recovered_and_noted(lesson_matrix):
    lesson, exercises, _, results = lesson_matrix
    if not exercises:
        pytest.skip(f"lesson {lesson} has no registered exercises yet")
    if "no_metadata" in results:
        assert "function names" in results["no_metadata"].note
    assert "exercise ids" in results["ids_only"].note
    assert results["solved"].note == ""


# --------------------------------------------------------------------------------------
# lesson 99: one exercise's trouble never costs the other one
# --------------------------------------------------------------------------------------


def _l99_variants() -> dict[str, tuple[dict, dict[str, str]]]:
    nb = json.loads(L99.NOTEBOOK.read_text(encoding="utf-8"))
    a = _exercise_index(nb, "99.center_rows")
    b = _exercise_index(nb, "99.RunningMean")
    src_a, src_b = _src(nb["cells"][a]), _src(nb["cells"][b])
    no_update = src_b.replace(
        "self.running = (1 - self.momentum) * self.running + self.momentum * mean", "pass"
    )
    eval_batch = src_b.replace("return x - self.running", "return x - np.mean(x, axis=0)")
    setup = next(i for i, c in enumerate(nb["cells"]) if "setup" in c["metadata"].get("tags", []))
    return {
        "solved": (nb, {}),
        # A's cell kills its process, loops, patches np.mean (which B uses), or does not
        # parse: B still gets its 3 points.
        "a_exit": (
            _with_source(nb, a, "import os\nos._exit(3)\n" + src_a),
            {"99.center_rows": r"exit code 3"},
        ),
        "a_loop": (
            _with_source(nb, a, "while True:\n    pass\n" + src_a),
            {"99.center_rows": r"exercise cell failed: ran longer than the 3 s time limit"},
        ),
        "a_patch": (
            _with_source(nb, a, "np.mean = lambda *a, **k: 0.0\n" + src_a),
            {"99.center_rows": r"patching numpy"},
        ),
        "a_syntax": (
            _with_source(nb, a, src_a + "\n    return (\n"),
            {"99.center_rows": r"SyntaxError"},
        ),
        "b_exit": (
            _with_source(nb, b, src_b + "\nimport os\nos._exit(4)\n"),
            {"99.RunningMean": r"exit code 4"},
        ),
        "b_no_update": (
            _with_source(nb, b, no_update),
            {"99.RunningMean": r"running statistics not updated"},
        ),
        "b_eval_batch": (
            _with_source(nb, b, eval_batch),
            {"99.RunningMean": r"wrong train/eval behaviour"},
        ),
        "setup_patch": (
            _with_source(nb, setup, _src(nb["cells"][setup]) + "\nnp.sum = len\n"),
            {"*": r"a setup cell patches numpy\.sum"},
        ),
        "blank": (build_notebook(nb), {"*": r"still holds the placeholder"}),
    }


def test_one_exercise_never_costs_another_its_points(tmp_path, capfd):
    variants = _l99_variants()
    paths = {name: _write(tmp_path, f"student {name}", nb) for name, (nb, _) in variants.items()}
    results = {
        r.path: r
        for r in grade(
            [tmp_path], seed=SEED, timeout=SHORT, catalog=L99.CATALOG, isolation=ISOLATION
        )
    }
    for name, (_, expect) in variants.items():
        res = results[str(paths[name])]
        assert res.lesson == "99", name
        _assert_scores(res, expect, L99.CATALOG["99"])
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 10_000  # learner prints never reach the grader's output


def test_same_submissions_same_scores_with_one_or_two_workers_and_files_untouched(tmp_path):
    variants = _l99_variants()
    for name in ("solved", "b_no_update", "a_syntax"):
        path = _write(tmp_path, name, variants[name][0])
        path.chmod(0o444)  # the grader only ever reads
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    first = [
        r.to_dict()
        for r in grade(
            [tmp_path], seed=SEED, timeout=SHORT, catalog=L99.CATALOG, isolation=ISOLATION
        )
    ]
    second = [
        r.to_dict()
        for r in grade(
            [tmp_path], seed=SEED, timeout=SHORT, catalog=L99.CATALOG, isolation=ISOLATION
        )
    ]
    one_worker = [
        r.to_dict()
        for r in grade(
            [tmp_path],
            seed=SEED,
            timeout=SHORT,
            catalog=L99.CATALOG,
            workers=1,
            isolation=ISOLATION,
        )
    ]
    assert first == second == one_worker
    assert [r["score"] for r in first] == [3, 2, 5]  # a_syntax, b_no_update, solved
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_hidden_cases_follow_the_seed_and_differ_from_visible():
    for ex in [*L99.CATALOG["99"], *[e for exs in default_catalog().values() for e in exs]]:
        a, b, c = make_task(ex, 0), make_task(ex, 0), make_task(ex, 1)
        hidden = [[pickle.dumps(case.args) for _, case, h in t.cases if h] for t in (a, b, c)]
        visible = [pickle.dumps(case.args) for _, case, h in a.cases if not h]
        assert hidden[0] == hidden[1], ex.id  # the same seed, the same tests
        if not any(_has_float_array(case.args) for _, case, h in a.cases if h):
            continue  # e.g. a multiple-choice exercise: nothing to randomise
        assert hidden[0] != hidden[2], ex.id
        assert not set(hidden[0]) & set(visible), ex.id


def test_a_placeholder_is_not_started_on_any_case_and_progress_can_tell():
    from course_utils.exercises.running import CaseRun
    from course_utils.grading.expected import ExpectedCache
    from course_utils.grading.jobs import Outcome
    from course_utils.grading.protocol import CaseReply
    from course_utils.grading.scoring import judge_result

    task = make_task(default_catalog()["00"][0], 0)
    cache = ExpectedCache()
    blank = CaseReply(CaseRun("placeholder"), [], [], False)
    first, later, wrong = Outcome(), Outcome(), Outcome()
    judge_result(task, 0, blank, first, cache)
    judge_result(task, 1, blank, later, cache)
    judge_result(task, 0, CaseReply(CaseRun("ok", 0.0), [], [], False), wrong, cache)
    assert first.status == "not started" and first.feedback.startswith("not attempted")
    assert later.status == "not started" and "still the placeholder" in later.feedback
    assert wrong.status == "failed" and "visible test 1 of" in wrong.feedback


# --------------------------------------------------------------------------------------
# the pieces: reading notebooks, the static scan, the wire
# --------------------------------------------------------------------------------------


def test_magics_become_plain_python():
    src = "%matplotlib inline\n!pip install torch\nx = '''\n%not a magic\n'''\n"
    out = to_python(src)
    compile(out, "<cell>", "exec")
    assert "%not a magic" in out and "pip install" in out and "get_ipython()" in out


def test_lesson_is_recognised_without_metadata(tmp_path):
    nb = json.loads(L99.NOTEBOOK.read_text(encoding="utf-8"))
    nb["metadata"] = {}
    for c in nb["cells"]:
        c["metadata"] = {}
    sub = read_submission(_write(tmp_path, "x", nb), L99.CATALOG)
    assert (sub.lesson, sub.how) == ("99", "function names")
    assert set(sub.exercises) == {"99.center_rows", "99.RunningMean"}
    # setup tags lost too: only the imports of the other cells run, never the lesson body
    assert all("import" in c.source and "raise" not in c.source for c in sub.setup)


@pytest.mark.parametrize(
    "source, reason",
    [
        ("import torch.nn.functional as G\ndef f(x):\n    return G.group_norm(x, 2)", "group_norm"),
        ("from torch.nn import LayerNorm\ndef f(x):\n    return LayerNorm(3)(x)", "LayerNorm"),
        ("import torch\ndef f(x):\n    return torch.ops.aten.native_batch_norm(x)", "native"),
        ("import solutions\ndef f(x):\n    return x", "course's answers"),
        ("import course_utils as cu\ndef f(x):\n    return cu.exercises.get_exercise", "answers"),
        ("import numpy as xp\nxp.mean = len", "assigns to numpy.mean"),
        ("import torch\ndel torch.Tensor.mean", "deletes torch.Tensor.mean"),
        ("import numpy\nsetattr(numpy, 'sum', len)", "patches numpy with setattr"),
    ],
)
def test_static_scan_flags(source, reason):
    reasons = scan_cell(
        source, ["import numpy as np"], ["group_norm", "LayerNorm", "native_batch_norm"]
    )
    assert any(reason in r for r in reasons), reasons


@pytest.mark.parametrize(
    "source",
    [
        "def layer_norm(x):\n    return x - x.mean()",  # the learner's own function
        "class Block:\n    def f(self, x):\n        return self.layer_norm(x)",
        "import torch\ntorch.backends.cudnn.deterministic = True",
        "import numpy as np\nnp.random.seed(0)\nx = np.mean([1.0])",
        "from course_utils import check, hint",
    ],
)
def test_static_scan_leaves_honest_code_alone(source):
    assert scan_cell(source, ["import torch.nn.functional as F"], ["layer_norm"]) == []


def test_wire_round_trip_and_refusals():
    import torch

    value = {
        "a": (np.arange(6.0).reshape(2, 3), torch.ones(2, dtype=torch.float32)),
        "b": [1, None, True, 2**70, -3.5, "é"],
    }
    got = decode(encode(value))
    np.testing.assert_array_equal(got["a"][0], np.arange(6.0).reshape(2, 3))
    assert got["a"][1].dtype == np.float32 and got["b"] == [1, None, True, 2**70, -3.5, "é"]
    assert type(decode(encode(object()))).__name__ == "Unsupported"
    assert decode(encode(np.array([object()], dtype=object))).type_name.startswith("array of dtype")
    nested: list = []
    for _ in range(100):
        nested = [nested]
    assert "deeply nested" in repr(decode(encode(nested)))  # cut, never a recursion error
    bad = [
        b"a\x03|O8\x01" + (1).to_bytes(8, "little") + (8).to_bytes(8, "little") + b"\0" * 8,
        b"l\xff\xff\xff\x7f",  # a list claiming 2**31 items
        b"s\x05\x00\x00\x00ab",  # a string longer than the message
        b"NN",  # trailing bytes
        b"x",  # no such tag
        pickle.dumps(("cell_done", os.system)),  # a pickle is not a message
    ]
    for payload in bad:
        with pytest.raises(WireError):
            decode(payload)
    with pytest.raises(WireError):  # a frame over the limit
        FrameReader(limit=100).feed((1000).to_bytes(4, "big"))
    from course_utils.exercises.running import CaseRun

    for run in (CaseRun("ok", 1.5), CaseRun("raised", error="E"), CaseRun("placeholder")):
        assert CaseRun.from_wire(decode(encode(run.to_wire()))) == run
    for malformed in (("ok",), ("raised", 3), ("missing", 1), (), "ok"):
        with pytest.raises(ValueError):
            CaseRun.from_wire(malformed)
    r, w = os.pipe()
    send_frame(w, encode(("cell", 3)))
    os.close(w)
    assert [decode(p) for p in FrameReader().feed(os.read(r, 1000))] == [("cell", 3)]
    os.close(r)


# --------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (ROOT / "solutions" / "00_start_here.ipynb").exists(), reason="needs lesson 00"
)
def test_command_line_reports_and_exit_codes(tmp_path):
    nb = json.loads((ROOT / "solutions" / "00_start_here.ipynb").read_text(encoding="utf-8"))
    subs = tmp_path / "class"
    subs.mkdir()
    _write(subs, "alice", nb)
    _write(subs, "bob", build_notebook(nb))
    _write(subs, "carol", "{not json")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "course_utils.grade",
            str(subs),
            "--json",
            str(tmp_path / "r.json"),
            "--csv",
            str(tmp_path / "r.csv"),
            "--timeout",
            "5",
            "--seed",
            "3",
            *NO_SANDBOX,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "standardize_columns" in run.stdout and "alice.ipynb" in run.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["seed"] == 3
    by_name = {Path(s["path"]).stem: s for s in report["submissions"]}
    assert {k: (v["lesson"], v["score"], v["max_score"]) for k, v in by_name.items()} == {
        "alice": ("00", 1, 1),
        "bob": ("00", 0, 1),
        "carol": ("?", 0, 0),
    }
    ex = by_name["bob"]["exercises"][0]
    assert set(ex) == {"id", "score", "max_score", "feedback"} and "placeholder" in ex["feedback"]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["00.standardize_columns"] for r in rows] == ["1", "0", ""]
    assert [r["score"] for r in rows] == ["1", "0", "0"]

    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "course_utils.grade", str(empty)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 2 and "no notebooks found" in run.stderr


def test_command_line_refuses_bad_arguments(tmp_path, capsys):
    assert grade_main([str(tmp_path / "missing.ipynb")]) == 2
    assert "no such file" in capsys.readouterr().err
    for argv in (
        [str(tmp_path), "--timeout", "0"],
        [str(tmp_path), "--timeout", "soon"],
        [str(tmp_path), "--json", str(tmp_path / "nope" / "r.json")],
        [],
    ):
        with pytest.raises(SystemExit) as exc:
            grade_main(argv)
        assert exc.value.code == 2


@pytest.mark.skipif(bwrap_problem() is not None, reason=f"no sandbox: {bwrap_problem()}")
def test_bench_grader_is_fast_enough():
    from course_utils.bench_grader import bench_grader

    # 100 submissions must take under 2 minutes; 10 get a proportional share, with slack.
    assert bench_grader(n=10) < 24.0


def test_only_the_learners_own_calls_to_torch_normalization_count(tmp_path):
    def notebook(body: str) -> dict:
        cell = {"course": {"exercise": "98.read_stats"}, "tags": ["exercise"]}
        return {
            "cells": [
                {"cell_type": "code", "metadata": {"tags": ["setup"]}, "source": "import torch"},
                {"cell_type": "code", "metadata": cell, "source": f"def read_stats(bn):\n{body}"},
            ],
            "metadata": {"course": {"lesson": "98"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }

    honest = _write(tmp_path, "honest", notebook("    return bn.running_mean.detach().numpy()\n"))
    gaming = _write(
        tmp_path,
        "gaming",
        notebook("    bn(torch.ones(2, 3))\n    return bn.running_mean.detach().numpy()\n"),
    )
    results = {
        r.path: r
        for r in grade(
            [tmp_path], seed=SEED, timeout=SHORT, catalog=L99.CATALOG98, isolation=ISOLATION
        )
    }
    assert results[str(honest)].score == 1, results[str(honest)].to_dict()
    feedback = results[str(gaming)].exercises[0].feedback
    assert results[str(gaming)].score == 0 and "calls" in feedback and "batch_norm" in feedback


def test_names_the_cell_binds_are_the_learners_own():
    setup = ["from course_utils.reference import functional as ref", "import torch.nn as nn"]
    src = "def f(x, ref=None):\n    nn = 3\n    return ref, nn.LayerNorm"
    assert scan_cell(src, setup, ["LayerNorm"]) == []
    assert scan_cell("def f(x):\n    return ref.batch_norm(x)", setup, ["batch_norm"])
    assert scan_cell("import torch\nG = torch.nn.functional\nG.batch_norm", [], ["batch_norm"])
