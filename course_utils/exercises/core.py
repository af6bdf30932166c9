"""The exercise model shared by the in-notebook checks and the grader.

An :class:`Exercise` says what the learner defines (a function or class called ``name``),
how to make test cases (visible ones with a fixed seed, hidden ones with the grader's seed),
how to run an object on a case (``run``: executed wherever the learner's object lives), and
the reference object whose outputs are the expected values. Expected values are always
computed from the answers (``course_utils.answers``), in the checker's own process (never in
the grader's sandbox), and compared by :func:`compare`, which explains a mismatch in plain
words.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .forbidden import FORBIDDEN_CALLS
from .mistakes import factor_mistake

__all__ = [
    "Case",
    "Exercise",
    "compare",
    "call_with_args",
    "rel_error",
    "numerical_gradient",
    "autograd_gradients",
    "gradient_diagnosis",
    "running_stats_diagnosis",
    "train_eval_diagnosis",
    "answer",
    "load_answer",
    "reference_functional",
]


def answer(lesson: str, name: str) -> Callable[[], Any]:
    """An :attr:`Exercise.reference`: returns ``course_utils.answers.lesson<NN>.<name>``,
    imported only when called (the answers live in one place and never where the grader
    runs a learner's code).

    Args:
        lesson: two digits, ``"03"``. name: the answer's name, like the learner's object.
    """

    def reference() -> Any:
        return getattr(importlib.import_module(f"course_utils.answers.lesson{lesson}"), name)

    reference.__qualname__ = f"answer({lesson!r}, {name!r})"
    return reference


def load_answer(lesson: str, name: str) -> Any:
    """The answer itself, or None where the answers are not installed (inside the grader's
    sandbox): for a driver that must tell the trusted answer from a learner's object."""
    try:
        return answer(lesson, name)()
    except ImportError:
        return None


def reference_functional() -> ModuleType:
    """:mod:`course_utils.reference.functional`, imported when called: for a ``diagnose``,
    which runs where the answers are (the grader, a learner's kernel), never in the sandbox."""
    return importlib.import_module("course_utils.reference.functional")


_NOT_GIVEN: Any = object()


@dataclass
class Case:
    """One test case: positional and keyword arguments, a label for messages, extra data."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    meta: dict = field(default_factory=dict)


def call_with_args(obj: Callable, case: Case) -> Any:
    """Default ``run``: ``obj(*case.args, **case.kwargs)`` on deep copies of the arguments."""
    args = copy.deepcopy(case.args)
    kwargs = copy.deepcopy(case.kwargs)
    return obj(*args, **kwargs)


@dataclass
class Exercise:
    """One graded exercise.

    Attributes:
        id: ``"LL.name"``, for example ``"03.batch_norm_forward"`` (LL = lesson number).
        name: the function or class the learner defines.
        points: what it is worth in the grader.
        title: one line saying what to implement.
        reference: zero-argument callable returning the trusted object to compare with,
            normally ``answer("NN", name)`` (the answer in ``course_utils.answers``).
        cases: ``cases(rng, hidden)`` -> list of :class:`Case`. ``hidden=False`` gives the
            visible cases the notebook check uses (called with a fixed seed); ``hidden=True``
            the grader's (randomised shapes and values, from the grader's seed).
        run: ``run(obj, case)`` -> plain outputs (arrays, tensors, numbers, strings, tuples,
            dicts). Runs in the learner's process for their object, and in the checker's
            process for the reference. It must be a module-level function (the grader's
            sandbox imports it by name) and must not import answers.
        hints: revealed one at a time by :func:`course_utils.hint`.
        atol, rtol: tolerance for numeric comparison.
        diagnose: optional ``diagnose(got, expected, case)`` -> message or None, tried before
            the generic comparison to give a more specific verdict (for example "running
            statistics not updated").
        forbidden: names the exercise must not call (the grader scores 0 if it does; see
            :mod:`.forbidden`); ``()`` allows torch's normalization (an exercise that uses
            ``nn.LayerNorm``).
        time_limit: seconds the grader allows this exercise's cases at least (for an
            exercise that trains a model); the grader uses the larger of this and its
            ``--timeout``. None: ``--timeout`` alone.
        seed_group: exercises with the same seed group get the same hidden cases from the
            grader (default: the id alone), so several ids that grade one learner function
            (the capstone's parts) share one measurement instead of training once per id.
        assess: optional ``assess(got, case)`` -> message or None, for an open-ended exercise
            whose output is judged on its own rather than compared with the reference's (the
            capstone: any trained model that meets the rubric passes). When set, ``judge``
            uses it alone and the reference's output is never computed.
    """

    id: str
    name: str
    points: int
    title: str
    reference: Callable[[], Any]
    cases: Callable[[np.random.Generator, bool], list[Case]]
    run: Callable[[Any, Case], Any] = call_with_args
    hints: Sequence[str] = ()
    atol: float = 1e-6
    rtol: float = 1e-5
    diagnose: Callable[[Any, Any, Case], str | None] | None = None
    forbidden: Sequence[str] = FORBIDDEN_CALLS
    time_limit: float | None = None
    seed_group: str | None = None
    assess: Callable[[Any, Case], str | None] | None = None

    @property
    def lesson(self) -> str:
        """The two-digit lesson number, from the id."""
        return self.id.split(".", 1)[0]

    @property
    def seed_key(self) -> str:
        """What the hidden cases are drawn with, besides the grader's seed: the seed group,
        else the id."""
        return self.seed_group or self.id

    def expected(self, case: Case) -> Any:
        """The reference's outputs on ``case``."""
        return self.run(self.reference(), case)

    def judge(self, got: Any, case: Case, expected: Any = _NOT_GIVEN) -> str | None:
        """None when ``got`` is right for ``case``, else a message saying what is wrong.

        ``expected`` (the reference's outputs) is computed from ``case`` when not given
        (never for an exercise with ``assess``).
        """
        if self.assess is not None:
            return self.assess(got, case)
        if expected is _NOT_GIVEN:
            expected = self.expected(case)
        if self.diagnose is not None:
            msg = self.diagnose(got, expected, case)
            if msg:
                return msg
        return compare(got, expected, atol=self.atol, rtol=self.rtol)


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def compare(
    got: Any, expected: Any, name: str = "output", atol: float = 1e-6, rtol: float = 1e-5
) -> str | None:
    """Compare a learner's output with the expected one; None if they match.

    Handles arrays and tensors (shape, NaN/inf, largest error and where), numbers, strings,
    booleans, and tuples / lists / dicts of these (each part named in the message).
    """
    got, expected = _to_numpy(got), _to_numpy(expected)
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{name}: expected a dict with keys {sorted(expected)}, got {type(got).__name__}"
        for key in expected:
            if key not in got:
                return f"{name}: missing {key!r}"
            msg = compare(
                got[key],
                expected[key],
                f"{key}" if name == "output" else f"{name}[{key!r}]",
                atol,
                rtol,
            )
            if msg:
                return msg
        return None
    if isinstance(expected, tuple):
        if got is None:
            return f"{name}: returned None - did you forget a `return` statement?"
        if not isinstance(got, (tuple, list)):
            return (
                f"{name}: expected {len(expected)} values (a tuple), got a single "
                f"{type(got).__name__}"
            )
        if len(got) != len(expected):
            return f"{name}: expected {len(expected)} values, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = compare(g, e, f"{name}[{i}]", atol, rtol)
            if msg:
                return msg
        return None
    if expected is None:
        return None if got is None else f"{name}: expected None, got {type(got).__name__}"
    if isinstance(expected, str):
        if not isinstance(got, str):
            return f"{name}: expected a string, got {type(got).__name__}"
        if got.strip().lower() != expected.strip().lower():
            return f"{name}: {got!r} is not the right answer"
        return None
    if isinstance(expected, (bool, np.bool_)):
        if got is None or bool(got) != bool(expected):
            return f"{name}: expected {bool(expected)}, got {got!r}"
        return None
    if got is None:
        return f"{name}: returned None - did you forget a `return` statement?"
    if isinstance(got, (str, bytes, dict, tuple)):
        return f"{name}: expected an array of numbers, got {type(got).__name__}"
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"{name}: expected numbers, got {type(got).__name__}"
    e = np.asarray(expected, dtype=np.float64)
    if g.shape != e.shape:
        return f"{name}: wrong shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    bad = ~np.isfinite(g) & np.isfinite(e)
    if bad.any():
        kinds = "NaN" if np.isnan(g[bad]).any() else "inf"
        return (
            f"{name}: contains {kinds} ({int(bad.sum())} of {g.size} values) where finite "
            f"values were expected - look for a division by zero (a variance of 0 needs the "
            f"eps inside the square root, sqrt(var + eps)) or a square root of a negative number"
        )
    if g.size == 0:
        return None
    err = np.abs(g - e)
    err = np.where(np.isfinite(e), err, np.where(g == e, 0.0, np.inf))
    tol = atol + rtol * np.abs(np.where(np.isfinite(e), e, 0.0))
    if (err <= tol).all():
        return None
    idx = np.unravel_index(int(np.argmax(err - tol)), err.shape)
    where = f" at index {tuple(int(i) for i in idx)}" if g.ndim else ""
    pattern = factor_mistake(g, e) if g.size > 1 else None
    return (
        f"{name}: wrong values - largest error {_fmt(float(err[idx]))}{where} "
        f"(got {_fmt(float(g[idx]))}, expected {_fmt(float(e[idx]))}); "
        f"{int((err > tol).sum())} of {g.size} values are off" + (f"; {pattern}" if pattern else "")
    )


def rel_error(a: Any, b: Any) -> float:
    """CS231n's relative error max |a - b| / max(1e-8, |a| + |b|), elementwise max."""
    a = np.asarray(_to_numpy(a), dtype=np.float64)
    b = np.asarray(_to_numpy(b), dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_gradient(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, grad_out: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Central-difference gradient of sum(f(x) * grad_out) with respect to x, in float64.

    Args:
        f: maps an array shaped like ``x`` to an array shaped like ``grad_out``.
        x: the point, any shape. grad_out: the upstream gradient.
    Returns:
        An array shaped like ``x``.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(np.asarray(f(x.copy())) * grad_out)
        x[i] = old - h
        minus = np.sum(np.asarray(f(x.copy())) * grad_out)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


# --------------------------------------------------------------------------------------
# Helpers for an exercise's ``diagnose``: gradients, running statistics, train/eval modes.
# They return a learner-facing sentence, or None when nothing specific is wrong.
# --------------------------------------------------------------------------------------


def autograd_gradients(
    fn: Callable[..., torch.Tensor], inputs: Sequence[Any], grad_out: Any
) -> list[np.ndarray | None]:
    """Gradients of ``sum(fn(*inputs) * grad_out)`` by torch.autograd, in float64.

    Args:
        fn: maps float64 tensors (one per input, same shapes) to a tensor shaped like
            ``grad_out``; typically a torch formula of the forward pass.
        inputs: arrays or tensors, any shapes; ``None`` entries are passed as ``None`` and
            get a ``None`` gradient.
        grad_out: the upstream gradient, shaped like ``fn``'s output.
    Returns:
        One array per input, shaped like that input (zeros where the output does not
        depend on it), or ``None`` for ``None`` inputs.
    """
    tensors = [
        None
        if a is None
        else torch.tensor(np.asarray(_to_numpy(a), dtype=np.float64), requires_grad=True)
        for a in inputs
    ]
    out = fn(*tensors)
    out.backward(torch.as_tensor(np.asarray(_to_numpy(grad_out), dtype=np.float64)))
    grads: list[np.ndarray | None] = []
    for t in tensors:
        if t is None:
            grads.append(None)
        else:
            grads.append(np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy().copy())
    return grads


def gradient_diagnosis(
    got: Any,
    references: dict[str, Any],
    name: str = "dx",
    threshold: float = 1e-5,
    atol: float = 1e-8,
) -> str | None:
    """Judge a learner's gradient against independent references (CS231n relative error).

    Use it in an exercise's ``diagnose`` with a numerical gradient
    (:func:`numerical_gradient`, central differences in float64) and torch.autograd
    (:func:`autograd_gradients`), so a wrong formula is reported against both.

    Args:
        got: the learner's gradient (array or tensor), shape S.
        references: ``{description: array of shape S}``, for example
            ``{"the numerical gradient": num, "torch.autograd": auto}``.
        name: what the gradient is called in the message (``"dx"``, ``"dgamma"``).
        threshold: the largest acceptable relative error
            ``|a - b| / max(1e-8, |a| + |b|)``; CS231n: below 1e-7 is excellent, above
            1e-2 is wrong. Float32 computations land near 1e-6.
        atol: differences smaller than this never count (relative errors of values that
            are both ~0 are noise).
    Returns:
        None when ``got`` agrees with every reference, else one sentence naming the
        relative error against each reference and where the largest difference is.
    """
    if got is None:
        return f"{name}: returned None - did you forget to return the gradient?"
    try:
        g = np.asarray(_to_numpy(got), dtype=np.float64)
    except (TypeError, ValueError):
        return f"{name}: expected an array of numbers, got {type(got).__name__}"
    parts, worst = [], None
    for label, ref in references.items():
        r = np.asarray(_to_numpy(ref), dtype=np.float64)
        if g.shape != r.shape:
            return f"{name}: wrong shape {tuple(g.shape)}, expected {tuple(r.shape)}"
        if not np.isfinite(g).all():
            kind = "NaN" if np.isnan(g).any() else "inf"
            return f"{name}: contains {kind} - look for a division by zero"
        diff = np.abs(g - r)
        rel = diff / np.maximum(1e-8, np.abs(g) + np.abs(r))
        bad = (rel > threshold) & (diff > atol)
        if bad.any():
            parts.append(f"{float(np.max(np.where(bad, rel, 0.0))):.1e} against {label}")
            if worst is None:
                idx = np.unravel_index(int(np.argmax(np.where(bad, diff, -1.0))), diff.shape)
                worst = (idx, g[idx], r[idx])
    if not parts:
        return None
    idx, gv, rv = worst
    where = f" at index {tuple(int(i) for i in idx)}" if g.ndim else ""
    return (
        f"{name}: wrong gradient - relative error {', '.join(parts)} (should be below "
        f"{threshold:.0e}); largest difference{where}: got {_fmt(float(gv))}, "
        f"expected {_fmt(float(rv))}"
    )


def _close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    try:
        a = np.asarray(_to_numpy(a), dtype=np.float64)
        b = np.asarray(_to_numpy(b), dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def running_stats_diagnosis(
    got: dict[str, Any],
    expected: dict[str, Any],
    initial: dict[str, Any],
    atol: float = 1e-6,
    rtol: float = 1e-5,
    advice: str = "",
) -> str | None:
    """Say what is wrong with running statistics after training-mode calls.

    Args:
        got: the learner's buffers after the calls, e.g. ``{"running_mean": (C,) array}``.
        expected: the reference's buffers after the same calls (same keys and shapes).
        initial: the buffers before the calls.
        advice: appended to a "wrong update" message (for example the momentum formula).
    Returns:
        "running statistics not updated: ..." when a buffer still holds its initial
        value, a located value mismatch when it was updated wrongly, else None.
    """
    for key, exp in expected.items():
        if not isinstance(got, dict) or key not in got:
            return f"running statistics: {key} is missing from the output"
        g = got[key]
        if compare(g, exp, key, atol, rtol) is None:
            continue
        if key in initial and _close(g, initial[key], atol, rtol):
            return (
                f"running statistics not updated: {key} still holds its initial values after "
                "a training-mode call - update it in place with the batch statistics "
                "(running = (1 - momentum) * running + momentum * batch)"
            )
        msg = f"running statistics updated wrongly: {compare(g, exp, key, atol, rtol)}"
        return f"{msg}; {advice}" if advice else msg
    return None


def train_eval_diagnosis(
    got_train: Any,
    got_eval: Any,
    expected_train: Any,
    expected_eval: Any,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> str | None:
    """Say when the learner's train and eval modes behave the wrong way round.

    Args:
        got_train, got_eval: the learner's outputs in training and evaluation mode on the
            same input (same shapes).
        expected_train, expected_eval: the reference's outputs for the same calls.
    Returns:
        A "wrong train/eval behaviour" sentence when eval mode uses batch statistics (or
        training mode uses the running ones), else None (leave it to :func:`compare`).
    """
    if _close(expected_train, expected_eval, atol, rtol):
        return None  # the two modes agree for this case: nothing to tell apart
    if _close(got_eval, expected_train, atol, rtol) or (
        _close(got_eval, got_train, atol, rtol) and _close(got_train, expected_train, atol, rtol)
    ):
        return (
            "wrong train/eval behaviour: in eval mode your output equals the training-mode "
            "output - normalize with the running statistics in eval mode, not the batch's own"
        )
    if _close(got_train, expected_eval, atol, rtol):
        return (
            "wrong train/eval behaviour: in training mode your output uses the running "
            "statistics - normalize with the batch's own statistics while training"
        )
    return None
