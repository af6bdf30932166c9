"""Static checks of an exercise cell, before anything runs (best effort, like the runtime
trap: the answers themselves are out of reach by isolation, not by these rules).

These score an exercise 0 whatever its outputs:

* calling a forbidden name (the exercise's ``forbidden``: torch's own normalization in any
  form, ``F.batch_norm``, ``nn.LayerNorm``, ``torch.ops.aten.native_batch_norm_backward``;
  autograd, ``y.backward(...)``, where the backward must be derived by hand; a course helper
  that is the exercise's answer);
* reaching for the course's answers or grading code: ``course_utils.answers``,
  ``course_utils.reference``, the lesson modules of ``course_utils.exercises``,
  ``course_utils.grading``, or the ``solutions`` notebooks;
* patching numpy or torch (assigning to, deleting or ``setattr`` on their attributes);
* a setup cell that (re)defines the exercise's name (the graded object must come from the
  exercise cell).

The scan resolves the aliases the setup cells and the cell itself import (``import numpy
as xp``, ``from torch.nn import functional as G``), so renaming a module does not hide a
use. Dynamic tricks (``getattr(F, "batch_" + "norm")``) are left to the runtime trap.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from .notebooks import Cell

__all__ = ["scan_cell", "scan_setup", "import_aliases", "is_answer_module"]

_DEFAULT_ALIASES = {
    "np": "numpy",
    "numpy": "numpy",
    "torch": "torch",
    "F": "torch.nn.functional",
    "nn": "torch.nn",
}
_PATCHABLE_ROOTS = ("numpy", "torch")
# What an exercise cell may take from course_utils.exercises: the notebook helpers only.
_ALLOWED_FROM_EXERCISES = {"check", "hint", "verify", "reset_hints", "Verdict"}


_ANSWER_PACKAGES = (
    "course_utils.answers",
    "course_utils.reference",
    "course_utils.exercises",
    "course_utils.grading",
    "solutions",
)
# Where a forbidden name counts: torch's own, and the course's helper modules (a helper that
# is an exercise's answer, such as experiments.transformer.Block, is forbidden by name).
_FORBIDDEN_ROOTS = ("torch", "course_utils")


def is_answer_module(module: str) -> bool:
    """True for modules that hold the course's answers or grading code (answers, reference
    implementations, exercise modules, the grader, the solution notebooks)."""
    return any(module == p or module.startswith(p + ".") for p in _ANSWER_PACKAGES)


def _parse(source: str | Cell) -> ast.Module | None:
    if isinstance(source, Cell):
        return source.tree
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def import_aliases(sources: Iterable[str | Cell]) -> dict[str, str]:
    """Local name -> dotted origin for every import in ``sources`` (later ones win).

    ``import numpy as np`` gives ``np -> numpy``; ``from torch import nn`` gives
    ``nn -> torch.nn``; ``from numpy import mean`` gives ``mean -> numpy.mean``.
    """
    aliases = dict(_DEFAULT_ALIASES)
    for src in sources:
        tree = _parse(src)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        root = a.name.split(".")[0]
                        aliases[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``F.batch_norm`` -> ``torch.nn.functional.batch_norm`` (None if not a name chain)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    root = aliases.get(node.id, node.id)
    return ".".join([root, *reversed(parts)])


def _line(node: ast.AST) -> str:
    return f" (line {node.lineno})" if hasattr(node, "lineno") else ""


def _forbidden_use(node: ast.AST, aliases: dict[str, str], forbidden: set[str]) -> str | None:
    """A reason when ``node`` names one of torch's normalization functions or modules."""
    if isinstance(node, ast.Attribute) and node.attr in forbidden:
        dotted = _dotted(node, aliases)
        shown = ast.unparse(node)
        # self.layer_norm and friends are the learner's own attributes; anything reached
        # from torch (or through an unknown chain that passes torch's C modules) is not.
        if dotted is not None and dotted.split(".")[0] in _FORBIDDEN_ROOTS:
            return f"uses `{shown}`, which is forbidden in this exercise{_line(node)}"
        if dotted is None and any(p in shown for p in ("torch", "_C", "aten", "ops")):
            return f"uses `{shown}`, which is forbidden in this exercise{_line(node)}"
    if (
        isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.split(".")[0] in _FORBIDDEN_ROOTS
    ):
        for a in node.names:
            if a.name in forbidden:
                return (
                    f"imports `{a.name}` from {node.module}, which is forbidden in this "
                    f"exercise{_line(node)}"
                )
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        origin = aliases.get(node.id, "")
        if origin.split(".")[0] in _FORBIDDEN_ROOTS and origin.rsplit(".", 1)[-1] in forbidden:
            return f"uses `{node.id}` ({origin}), which is forbidden in this exercise{_line(node)}"
    if (
        "backward" in forbidden
        and isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backward"
    ):
        return (
            f"calls `{ast.unparse(node.func)}()` (autograd){_line(node)} - this exercise asks "
            "for the backward pass derived by hand"
        )
    return None


def _answer_use(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """A reason when ``node`` reaches for course_utils.reference, the exercises or solutions."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if is_answer_module(a.name):
                return f"imports {a.name}, which holds the course's answers{_line(node)}"
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        for a in node.names:
            full = f"{node.module}.{a.name}"
            if node.module == "course_utils.exercises" and a.name in _ALLOWED_FROM_EXERCISES:
                continue
            if is_answer_module(node.module) or is_answer_module(full):
                return f"imports {full}, which holds the course's answers{_line(node)}"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        for needle in (
            "course_utils.answers",
            "course_utils.reference",
            "course_utils.exercises.lesson",
            "course_utils.grading",
        ):
            if needle in node.value:
                return f"refers to {needle}, which holds the course's answers{_line(node)}"
    if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
        dotted = _dotted(node, aliases)
        if (
            dotted
            and is_answer_module(dotted)
            and dotted.split(".")[-1] not in _ALLOWED_FROM_EXERCISES
        ):
            return f"uses {dotted}, which holds the course's answers{_line(node)}"
    return None


def _patch_target(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """The numpy/torch attribute an assignment target changes, if any."""
    while isinstance(node, ast.Subscript):  # np.__dict__["mean"] = ...
        node = node.value
    if isinstance(node, ast.Attribute):
        dotted = _dotted(node, aliases)
        # torch.backends.* are configuration switches meant to be set, not patches.
        if dotted and dotted.split(".")[0] in _PATCHABLE_ROOTS:
            return None if dotted.startswith("torch.backends.") else dotted
    return None


def _patch(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """A reason when ``node`` assigns to, deletes or setattr's a numpy/torch attribute."""
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Delete):
        targets = list(node.targets)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("setattr", "delattr")
        and node.args
    ):
        dotted = _dotted(node.args[0], aliases)
        if dotted and dotted.split(".")[0] in _PATCHABLE_ROOTS:
            return f"patches {dotted} with {node.func.id}(){_line(node)}"
    expanded: list[ast.AST] = []
    for t in targets:
        expanded.extend(t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])
    for t in expanded:
        dotted = _patch_target(t, aliases)
        if dotted:
            verb = "deletes" if isinstance(node, ast.Delete) else "assigns to"
            return f"{verb} {dotted} (patching {dotted.split('.')[0]}){_line(node)}"
    return None


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the cell itself binds (assignments, parameters, defs, loop targets...).

    Such a name is the learner's own variable wherever it is used in the cell, even if a
    setup cell imported something under the same name.
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def scan_setup(setup: Sequence[str | Cell], name: str) -> list[str]:
    """Reasons when a setup cell binds ``name`` (def, class, assignment, import): the graded
    object must be the one the exercise cell defines, not one a setup cell slips in."""
    reasons = []
    for cell in setup:
        tree = _parse(cell)
        if tree is None or name not in _bound_names(tree) | _imported_names(tree):
            continue
        where = f"cell {cell.index}" if isinstance(cell, Cell) else "a setup cell"
        reasons.append(
            f"a setup cell ({where}) defines `{name}` - write it in the exercise cell only"
        )
    return reasons


def _imported_names(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def scan_cell(
    source: str | Cell,
    setup_sources: Sequence[str | Cell] = (),
    forbidden: Iterable[str] = (),
) -> list[str]:
    """Static reasons an exercise cell scores 0, one sentence each (empty: nothing found).

    Args:
        source: the exercise cell (plain Python, or a parsed :class:`Cell`).
        setup_sources: the setup cells, whose imports define the aliases the cell uses.
        forbidden: the exercise's forbidden names (``Exercise.forbidden``); empty turns the
            forbidden-call rule off (the course-answers and patching rules stay).
    """
    tree = _parse(source)
    if tree is None:
        return []  # a syntax error is reported when the cell runs
    aliases = import_aliases([*setup_sources, source])
    for name in _bound_names(tree):  # the learner's own `def layer_norm` is not torch's
        aliases.pop(name, None)
    for node in ast.walk(tree):  # ...but `G = torch.nn.functional` is still torch
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, (ast.Name, ast.Attribute))
        ):
            dotted = _dotted(node.value, aliases)
            if dotted and dotted.split(".")[0] in ("torch", "numpy", "course_utils", "solutions"):
                aliases[node.targets[0].id] = dotted
    forbidden = set(forbidden)
    reasons: list[str] = []
    for node in ast.walk(tree):
        for rule in (
            (lambda n: _forbidden_use(n, aliases, forbidden)) if forbidden else None,
            lambda n: _answer_use(n, aliases),
            lambda n: _patch(n, aliases),
        ):
            if rule is None:
                continue
            reason = rule(node)
            if reason and reason not in reasons:
                reasons.append(reason)
    return reasons
