"""The in-notebook checks: one clear verdict per check, hints one at a time, and the
``diagnose`` helpers (gradients, running statistics, train/eval) lesson authors build on."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from course_utils.exercises import Case, Exercise, Verdict, check, hint, verify
from course_utils.exercises.core import (
    autograd_gradients,
    compare,
    gradient_diagnosis,
    numerical_gradient,
    rel_error,
    running_stats_diagnosis,
    train_eval_diagnosis,
)
from course_utils.exercises.notebook import reset_hints
from course_utils.reference.functional import batch_norm_backward

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EX = "00.standardize_columns"


def _load_lesson99():
    spec = importlib.util.spec_from_file_location("checks_lesson99", FIXTURES / "lesson99.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


L99 = _load_lesson99()


def good(x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=0) + eps)


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------


def test_a_correct_function_passes():
    v = verify(EX, good)
    assert v.passed and v.status == "passed"
    assert re.match(r"all \d+ visible tests pass\. Worth 1 point;", v.message)


def test_wrong_shape():
    v = verify(EX, lambda x, eps=1e-5: np.asarray(x).mean(axis=0))
    assert v.status == "failed"
    assert "test 1 of" in v.message and "wrong shape (3,), expected (8, 3)" in v.message


def test_wrong_values_say_how_much_and_where():
    def noisy(x, eps=1e-5):
        return good(x, eps) + np.sin(np.arange(np.size(x))).reshape(np.shape(x))

    v = verify(EX, noisy)
    assert v.status == "failed"
    m = re.search(
        r"wrong values - largest error ([\d.e+-]+) at index \((\d+), (\d+)\) "
        r"\(got ([\d.e+-]+), expected ([\d.e+-]+)\); (\d+) of (\d+) values are off",
        v.message,
    )
    assert m, v.message


def test_nan_and_inf_are_named():
    v = verify(EX, lambda x, eps=1e-5: np.asarray(x) * np.nan)
    assert "contains NaN" in v.message and "division by zero" in v.message
    v = verify(EX, lambda x, eps=1e-5: np.asarray(x) / 0.0 + 1.0)
    assert re.search(r"contains (NaN|inf)", v.message)


def test_the_placeholder_is_not_started():
    def standardize_columns(x, eps=1e-5):
        raise NotImplementedError("Exercise 00.standardize_columns: replace this line")

    v = verify(EX, standardize_columns)
    assert v.status == "not started" and not v.passed
    assert "placeholder" in v.message and "raise NotImplementedError" in v.message
    assert str(v).startswith("[NOT STARTED] 00.standardize_columns:")


def test_an_exception_gives_type_message_and_the_learners_line():
    def standardize_columns(x, eps=1e-5):
        mean = x.mean(axis=2)
        return x - mean

    v = verify(EX, standardize_columns)
    assert v.status == "failed"
    assert "raised AxisError: axis 2 is out of bounds" in v.message
    assert "(in standardize_columns, line" in v.message and "mean = x.mean(axis=2)" in v.message
    assert "Traceback" not in v.message and "\n" not in v.message


def test_none_returned_points_at_the_missing_return():
    def standardize_columns(x, eps=1e-5):
        x = x - x.mean(0)

    assert (
        "returned None - did you forget a `return` statement?"
        in verify(EX, standardize_columns).message
    )


def test_passing_the_result_or_nothing():
    assert "without calling" in verify(EX, good(np.ones((2, 2)))).message
    assert "got None instead of your standardize_columns" in verify(EX, None).message
    assert "no exercise '99.nope'" in verify("99.nope", good).message


def test_sys_exit_and_odd_errors_never_escape():
    def leaves(x, eps=1e-5):
        raise SystemExit(0)

    assert "SystemExit" in verify(EX, leaves).message

    def interrupted(x, eps=1e-5):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the stop button still stops
        verify(EX, interrupted)

    class Weird:  # an output the comparison cannot even convert
        def __array__(self, *a, **k):
            raise RuntimeError("nope")

    assert verify(EX, lambda x, eps=1e-5: Weird()).status == "failed"


def test_a_hostile_exception_still_gives_one_line():
    from course_utils.exercises.running import describe_exception

    class Hostile(Exception):
        def __str__(self):
            raise RuntimeError("no")

    def standardize_columns(x, eps=1e-5):
        raise Hostile

    assert describe_exception(Hostile()) == "Hostile"
    assert verify(EX, standardize_columns).message.endswith("raised Hostile")


def test_a_module_calling_torchs_kernel_by_another_name_is_refused():
    from torch import nn

    class LayerNorm(nn.Module):  # the ATen entry point behind F.layer_norm, not F.layer_norm
        def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
            super().__init__()
            self.shape = (
                (normalized_shape,)
                if isinstance(normalized_shape, int)
                else tuple(normalized_shape)
            )
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(self.shape)) if elementwise_affine else None
            self.bias = (
                nn.Parameter(torch.zeros(self.shape)) if elementwise_affine and bias else None
            )

        def forward(self, x):
            return torch.native_layer_norm(x, self.shape, self.weight, self.bias, self.eps)[0]

    v = verify("06.LayerNorm", LayerNorm)
    assert v.status == "failed" and "from primitive tensor operations" in v.message, v.message
    assert torch.native_layer_norm.__name__ == "native_layer_norm"  # restored afterwards


def test_check_shows_one_verdict_and_returns_it(capsys):
    v = check(EX, good)
    out = capsys.readouterr().out
    assert out.count("[PASSED]") == 1 and isinstance(v, Verdict) and v.passed
    v = check(EX, lambda x, eps=1e-5: x)
    assert capsys.readouterr().out.startswith("[FAILED] 00.standardize_columns: test 1 of")
    html = Verdict("00.x", "failed", "a <b> & c")._repr_html_()
    assert "a &lt;b&gt; &amp; c" in html and "FAILED" in html


def test_compare_names_the_part_that_is_wrong():
    exp = {"mean": np.zeros(3), "var": np.ones(3)}
    assert compare({"mean": np.zeros(3)}, exp) == "output: missing 'var'"
    assert "var: wrong values" in compare({"mean": np.zeros(3), "var": np.zeros(3)}, exp)
    assert compare((1.0,), (1.0, 2.0)) == "output: expected 2 values, got 1"
    assert "output[1]: returned None" in compare((1.0, None), (1.0, np.ones(2)))
    assert compare("B", "b") is None and "not the right answer" in compare("A", "b")
    assert compare(torch.ones(2), np.ones(2)) is None


# --------------------------------------------------------------------------------------
# hints
# --------------------------------------------------------------------------------------


def test_hints_come_one_at_a_time_and_show_every_hint_so_far(capsys):
    from course_utils.exercises import get_exercise

    hints = get_exercise(EX).hints
    reset_hints()
    for n in (1, 2, 3):
        hint(EX)
        out = capsys.readouterr().out
        assert out.startswith(f"Hints for {EX} ({n} of 3 shown):")
        for k in range(3):  # every hint revealed so far, and none beyond
            assert (f"  {k + 1}. {hints[k]}" in out) == (k < n)
    hint(EX)
    out = capsys.readouterr().out
    assert "3 of 3 shown" in out and "last one" in out and all(h in out for h in hints)
    assert "reference" not in out.lower()
    reset_hints(EX)
    hint(EX)
    assert capsys.readouterr().out.startswith(f"Hints for {EX} (1 of 3 shown)")
    hint("99.nope")
    assert "no exercise '99.nope'" in capsys.readouterr().out
    reset_hints()


def test_no_hint_points_to_the_reference_implementations():
    from course_utils.exercises import all_exercises

    for ex_id, ex in all_exercises().items():
        for h in ex.hints:
            assert "reference" not in h.lower() and "solutions" not in h, (ex_id, h)


def _solution_lines(ex_id: str) -> list[str]:
    """The code lines of an exercise's solution in solutions/ (between the markers)."""
    import nbformat

    root = Path(__file__).resolve().parents[1] / "solutions"
    for path in sorted(root.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.get("metadata", {}).get("course", {}).get("exercise") == ex_id:
                body = cell.source.split("### BEGIN SOLUTION")[1:]
                lines = [
                    ln.strip() for part in body for ln in part.split("### END")[0].splitlines()
                ]
                return [ln for ln in lines if len(ln) >= 12 and not ln.startswith("#")]
    return []


def test_first_hint_gives_nothing_away():
    """A nudge, not the answer: no code (assignments, calls of NumPy or torch, return) and no
    line of the solution in any exercise's first hint."""
    from course_utils.exercises import all_exercises

    code = ("np.", "torch.", " = ", "return ", ".mean(", "axis=", "reshape(", "x[")
    checked = 0
    for ex_id, ex in all_exercises().items():
        first = ex.hints[0]
        assert not [t for t in code if t in first], (ex_id, first)
        for line in _solution_lines(ex_id):
            assert line not in first, (ex_id, line)
            checked += 1
        assert len(ex.hints) >= 2, f"{ex_id}: a nudge needs a next hint with the idea"
    assert checked > 100


# --------------------------------------------------------------------------------------
# the common numeric mistakes are named, not only "wrong values"
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ex_id, wrong, expected",
    [
        (EX, lambda x, eps=1e-5: (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps), "N - 1"),
        (EX, lambda x, eps=1e-5: (x - x.mean(0)) / np.sqrt(x.var(0)), "eps is missing"),
        (
            EX,
            lambda x, eps=1e-5: (
                (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)
            ),
            "wrong axis",
        ),
        (EX, lambda x, eps=1e-5: (x - x.mean(0)) / (x.var(0) + eps), "divided by the variance"),
        (
            "06.layer_norm_forward",
            lambda x, g, b, eps=1e-5: (
                (x - x.mean(-1, keepdims=True))
                / np.sqrt(x.var(-1, keepdims=True, ddof=1) + eps)
                * g
                + b
            ),
            "N - 1",
        ),
        (
            "06.layer_norm_forward",
            lambda x, g, b, eps=1e-5: (
                (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + eps) * g + b
            ),
            "outside the square root",
        ),
        (
            "06.rms_norm_forward",
            lambda x, w, eps=1e-6: x / (np.sqrt((x**2).mean(-1, keepdims=True)) + eps) * w,
            "outside the square root",
        ),
        (
            "07.instance_norm_forward",
            lambda x, g, b, eps=1e-5: (
                (x - x.mean((2, 3), keepdims=True))
                / np.sqrt(x.var((2, 3), keepdims=True, ddof=1) + eps)
                * g.reshape(1, -1, 1, 1)
                + b.reshape(1, -1, 1, 1)
            ),
            "N - 1",
        ),
    ],
)
def test_common_numeric_mistakes_are_named(ex_id, wrong, expected):
    v = verify(ex_id, wrong)
    assert v.status == "failed" and expected in v.message, v.message


def test_batch_norm_forward_names_the_wrong_axis():
    def wrong_axis(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
        x = np.asarray(x, dtype=np.float64)
        mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
        n = len(x)
        new_rm = (1 - momentum) * rm + momentum * x.mean(0)
        new_rv = (1 - momentum) * rv + momentum * x.var(0) * n / (n - 1)
        return (x - mu) / np.sqrt(var + eps) * gamma + beta, new_rm, new_rv

    v = verify("03.batch_norm_forward", wrong_axis)
    assert v.status == "failed" and "wrong axis" in v.message, v.message


def test_generic_comparison_names_a_factor_a_shift_and_a_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)) * 2 + 1
    right = (x - x.mean(0)) / x.std(0)
    unbiased = (x - x.mean(0)) / x.std(0, ddof=1)
    msg = compare(unbiased, right)
    assert "sqrt((N - 1) / N) for N = 16" in msg and "unbiased variance" in msg
    assert "0.9375 times the expected one" in compare(x.var(0), x.var(0, ddof=1))  # 15/16
    assert "a constant factor" in compare(3 * right, right)
    assert "same constant, 0.5" in compare(right + 0.5, right)
    assert "sign" in compare(-right, right)
    assert compare(right + rng.normal(size=right.shape), right).endswith("values are off")


# --------------------------------------------------------------------------------------
# diagnose helpers: running statistics, train/eval, through a class exercise
# --------------------------------------------------------------------------------------


def _running_mean(update=True, eval_uses_batch=False, train_uses_running=False, momentum=0.1):
    class RunningMean:
        def __init__(self, dim, momentum=0.1):
            self.running = np.zeros(dim)
            self.training = True

        def __call__(self, x):
            x = np.asarray(x, dtype=np.float64)
            mean = x.mean(axis=0)
            if self.training:
                if update:
                    self.running = (1 - momentum) * self.running + momentum * mean
                return x - (self.running if train_uses_running else mean)
            return x - (mean if eval_uses_batch else self.running)

    return RunningMean


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, None),
        ({"update": False}, "running statistics not updated: running still holds its initial"),
        ({"momentum": 0.5}, "running statistics updated wrongly: running: wrong values"),
        ({"eval_uses_batch": True}, "wrong train/eval behaviour: in eval mode"),
        ({"train_uses_running": True}, "wrong train/eval behaviour: in training mode"),
    ],
)
def test_stateful_verdicts(kwargs, message):
    v = verify(L99.RUNNING_MEAN, _running_mean(**kwargs))
    if message is None:
        assert v.passed, v.message
    else:
        assert v.status == "failed" and message in v.message, v.message


def test_train_eval_diagnosis_stays_quiet_when_modes_agree():
    a = np.ones((2, 2))
    assert train_eval_diagnosis(a, a, a, a) is None
    assert running_stats_diagnosis({"m": a}, {"m": a}, {"m": 0 * a}) is None
    assert "missing" in running_stats_diagnosis({}, {"m": a}, {"m": a})


# --------------------------------------------------------------------------------------
# gradients: numerical (central differences, float64) and autograd references
# --------------------------------------------------------------------------------------


def _bn_forward_np(x):
    mean = x.mean(axis=0)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=0) + 1e-5)


def _bn_forward_torch(x):
    mean = x.mean(dim=0)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=0) + 1e-5)


def _gradient_references(x, dout):
    return {
        "the numerical gradient": numerical_gradient(_bn_forward_np, x, dout),
        "torch.autograd": autograd_gradients(_bn_forward_torch, [x], dout)[0],
    }


def test_numerical_and_autograd_gradients_agree_with_the_closed_form():
    rng = np.random.default_rng(0)
    x, dout = rng.normal(size=(6, 3)) * 2 + 1, rng.normal(size=(6, 3))
    refs = _gradient_references(x, dout)
    dx = batch_norm_backward(dout, x)[0]
    assert rel_error(refs["the numerical gradient"], dx) < 1e-6
    assert rel_error(refs["torch.autograd"], dx) < 1e-10
    assert gradient_diagnosis(dx, refs) is None
    assert gradient_diagnosis(torch.as_tensor(dx), refs) is None
    x2 = rng.normal(size=4)
    assert autograd_gradients(lambda a, b: a * 2, [x2, None], np.ones(4))[1] is None


def test_gradient_diagnosis_reports_relative_error_against_each_reference():
    rng = np.random.default_rng(1)
    x, dout = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    refs = _gradient_references(x, dout)
    naive = dout / np.sqrt(x.var(axis=0) + 1e-5)  # forgets that the statistics depend on x
    msg = gradient_diagnosis(naive, refs)
    assert re.search(
        r"dx: wrong gradient - relative error [\d.e+-]+ against the numerical gradient, "
        r"[\d.e+-]+ against torch.autograd \(should be below 1e-05\); largest difference at "
        r"index \(\d+, \d+\): got",
        msg,
    ), msg
    assert "wrong shape (4,)" in gradient_diagnosis(naive[0], refs)
    assert "contains NaN" in gradient_diagnosis(naive * np.nan, refs)
    assert "returned None" in gradient_diagnosis(None, refs, name="dgamma")


def test_a_gradient_exercise_reports_through_check():
    def cases(rng, hidden):
        return [Case(args=(rng.normal(size=(4, 3)), rng.normal(size=(4, 3))), label="N=4, D=3")]

    def diagnose(got, expected, case):
        dout, x = case.args
        return gradient_diagnosis(got, _gradient_references(x, dout))

    ex = Exercise(
        id="99.bn_backward",
        name="bn_backward",
        points=2,
        title="dx of batch norm",
        reference=lambda: lambda dout, x: batch_norm_backward(dout, x)[0],
        cases=cases,
        diagnose=diagnose,
    )
    assert verify(ex, lambda dout, x: batch_norm_backward(dout, x)[0]).passed
    v = verify(ex, lambda dout, x: dout / np.sqrt(x.var(axis=0) + 1e-5))
    assert "dx: wrong gradient - relative error" in v.message and "torch.autograd" in v.message


# --------------------------------------------------------------------------------------
# in a real kernel: exactly one verdict per check, also when it is not the last line
# --------------------------------------------------------------------------------------


def test_check_in_a_kernel_shows_one_verdict():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\nfrom course_utils import check\n"
            "def standardize_columns(x, eps=1e-5):\n"
            "    m = x.mean(0)\n"
            "    return (x - m) / np.sqrt(((x - m) ** 2).mean(0) + eps)"
        ),
        nbformat.v4.new_code_cell('check("00.standardize_columns", standardize_columns)'),
        nbformat.v4.new_code_cell('check("00.standardize_columns", len)\nx = 1'),
    ]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    for cell, word in ((nb.cells[1], "PASSED"), (nb.cells[2], "FAILED")):
        shown = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        assert len(shown) == 1 and word in shown[0]["data"]["text/html"], cell.outputs
        assert not [o for o in cell.outputs if o.output_type == "error"]
