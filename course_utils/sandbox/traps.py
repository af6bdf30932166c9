"""Best-effort traps in the sandboxed child: which functions the learner's code calls, and
whether it patched numpy or torch.

They run in the learner's own process, so a determined submission can switch them off (the
grader then sees ``tampered``): they are signals, not the boundary. What isolation guarantees
(no answers, no other submission, the verdict decided outside) does not depend on them.

* :class:`CallTrap` records, while the learner's object runs, every call made from learner
  code (directly, through library code, from ``exec``'d code or functions it built) to a
  forbidden name: torch's normalization in every form (``F.layer_norm``, ``torch.layer_norm``,
  ``torch._C._VariableFunctions.native_layer_norm``, ``torch.ops.aten.native_layer_norm``,
  ``nn.LayerNorm`` and the backward kernels), autograd where an exercise bans it
  (``Tensor.backward``, ``torch.autograd.grad``, the engine they all reach, ``torch.func``),
  named helpers of the course's own modules, and any code of the lesson modules
  (``course_utils/exercises/lesson*.py``: drivers and judges, never meant for learners).
* :class:`ModuleGuard` remembers the attributes of numpy and torch and reports (and undoes)
  any change, so a patch is caught and cannot leak into the next exercise.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

from ..exercises.forbidden import torch_functions

__all__ = ["CallTrap", "ModuleGuard", "COURSE_CODE_LABEL", "trust"]

COURSE_CODE_LABEL = "the course's grading code"
_PACKAGE = Path(__file__).resolve().parents[1]
# Course modules whose forbidden names are watched too (``Block`` of experiments.transformer
# is an exercise's answer; ``numerical_gradient`` in a hand-derived backward).
_COURSE_MODULES = ("course_utils.experiments", "course_utils.exercises.core")


def _trusted_dirs() -> tuple[str, ...]:
    """Folders whose code is the runtime's, not the learner's: the Python installation, the
    installed packages and the course package."""
    import sysconfig

    dirs = {str(_PACKAGE)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(path)
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p):
            dirs.add(p)
    for mod in ("numpy", "torch"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, "__file__", None):
            dirs.add(str(Path(m.__file__).parent))
    out = set()
    for d in dirs:
        out.add(d.rstrip("/") + "/")
        out.add(str(Path(d).resolve()).rstrip("/") + "/")
    return tuple(sorted(out))


_TRUSTED = _trusted_dirs()
# Captured at import, before any learner code: replacing sys.setprofile later changes nothing.
_setprofile, _getprofile, _thread_setprofile = sys.setprofile, sys.getprofile, threading.setprofile


def trust(files: Iterable[str]) -> None:
    """Count these files' code as the runtime's too (run drivers loaded from outside the
    course package, such as a test catalog's)."""
    global _TRUSTED
    _TRUSTED = tuple(sorted(set(_TRUSTED) | {str(f) for f in files}))


def _is_learner(frame: FrameType | None) -> bool:
    """Code the learner wrote or built: notebook cells, ``exec``'d strings, files it wrote.
    (A learner can forge a trusted file name with ``compile``: best effort.)"""
    if frame is None:
        return False
    name = frame.f_code.co_filename
    if name.startswith("<frozen "):
        return False
    return not name.startswith(_TRUSTED)


def _learner_above(frame: FrameType | None) -> bool:
    while frame is not None:
        if _is_learner(frame):
            return True
        frame = frame.f_back
    return False


def _lesson_label(code: CodeType) -> str:
    module = Path(code.co_filename).stem
    # co_qualname is Python 3.11+; on 3.10 a method is named without its class
    qualname = getattr(code, "co_qualname", code.co_name)
    return f"course_utils.exercises.{module}.{qualname} ({COURSE_CODE_LABEL})"


class CallTrap:
    """Records forbidden calls made while :meth:`armed` is active.

    Args:
        forbidden: every name any exercise of the job forbids (``Exercise.forbidden``, from
            :mod:`course_utils.exercises.forbidden`); the grader decides which recorded calls
            matter for which exercise.
    Attributes:
        calls: what was called during the last armed period, as labels such as
            ``"torch.nn.functional.layer_norm"`` or ``"torch.ops.aten.native_batch_norm"``.
        tampered: True when the learner's code replaced the profile hook.
    """

    def __init__(self, forbidden: Iterable[str]) -> None:
        self.forbidden = set(forbidden)
        self.calls: dict[str, None] = {}  # insertion-ordered set
        self.tampered = False
        self._armed = False
        self._codes: dict[CodeType, str] = {}
        self._builtins: dict[Any, str] = {}
        self._builtin_names: dict[str, str] = {}
        self._op_codes: set[CodeType] = set()
        self._lesson_files = {str(p) for p in (_PACKAGE / "exercises").glob("lesson*.py")}
        self._lesson_files |= {str(Path(p).resolve()) for p in self._lesson_files}
        self._hook = self._profile  # one bound method, so identity checks work

    # -- installation ------------------------------------------------------------------
    def install(self) -> None:
        """Wrap torch's forbidden functions and index the code the profile hook watches."""
        import torch
        import torch.nn as nn

        self._index_modules()  # before wrapping: the wrappers share one code object
        self._index_special(torch)
        for mod, prefix, name in torch_functions(sorted(self.forbidden)):
            setattr(mod, name, self._wrap(mod.__dict__[name], f"{prefix}.{name}"))
        torch_dir = str(Path(torch.__file__).parent)
        for name in sorted(self.forbidden):
            cls = getattr(nn, name, None)
            if isinstance(cls, type):
                for meth in ("__init__", "forward"):
                    fn = getattr(cls, meth, None)
                    code = getattr(fn, "__code__", None)
                    if code is None or not code.co_filename.startswith(torch_dir):
                        continue
                    # _BatchNorm.__init__ is shared by BatchNorm1d/2d/3d: name the class
                    # only when the code is its own (the function's __qualname__: the code's
                    # co_qualname is Python 3.11+).
                    own = fn.__qualname__.split(".")[0] == name
                    label = f"torch.nn.{name}" if own else "a torch.nn normalization module"
                    self._codes[code] = label

    def _watch(self, fn: Any, label: str) -> None:
        code = getattr(fn, "__code__", None)
        try:
            if code is not None:
                self._codes.setdefault(code, label)
            else:
                self._builtins.setdefault(fn, label)
        except TypeError:  # an unhashable callable: the name check below still sees it
            pass

    def _index_modules(self) -> None:
        """Watch forbidden names wherever torch (or the course's helper modules) define them:
        ``torch._refs``, ``torch._C._VariableFunctions``, ``torch.autograd``,
        ``torch.func``... so the profile hook sees them however they are reached."""
        for modname, mod in list(sys.modules.items()):
            if not (
                modname == "torch"
                or modname.startswith(("torch.", "torch._C"))
                or modname.startswith(_COURSE_MODULES)
            ):
                continue
            namespace = getattr(mod, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name in self.forbidden.intersection(namespace):
                fn = namespace[name]
                if isinstance(fn, type):
                    if modname.startswith("course_utils."):  # a course class: its methods
                        for meth in ("__init__", "forward", "__call__"):
                            f = fn.__dict__.get(meth)
                            if f is not None:
                                self._watch(f, f"{modname}.{name}")
                    continue
                if callable(fn):
                    self._watch(fn, f"{modname}.{name}")

    def _index_special(self, torch: ModuleType) -> None:
        """Names reached through objects rather than modules: C namespaces, ``torch.ops``,
        ``Tensor.backward`` and the autograd engine's C entry point."""
        for ns, prefix in ((torch._C._VariableFunctions, "torch._C._VariableFunctions"),):
            for name in self.forbidden:
                fn = getattr(ns, name, None)
                if fn is not None and callable(fn):
                    self._watch(fn, f"{prefix}.{name}")
        if "backward" in self.forbidden:
            self._watch(torch.Tensor.backward, "torch.Tensor.backward")
        for name in self.forbidden:  # builtin methods are new objects on each access
            self._builtin_names[f"_EngineBase.{name}"] = f"torch.autograd engine ({name})"
        from torch._ops import OpOverload, OpOverloadPacket

        for cls in (OpOverloadPacket, OpOverload):
            code = getattr(cls.__call__, "__code__", None)
            if code is not None:
                self._op_codes.add(code)

    def _wrap(self, fn: Any, label: str) -> Any:
        trap = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Only calls made on the learner's behalf count: an exercise's own driver may
            # build a BatchNorm module to hand to the learner.
            if trap._armed and _learner_above(sys._getframe(1)):
                trap.calls.setdefault(label)
            return fn(*args, **kwargs)

        return wrapper

    # -- recording ---------------------------------------------------------------------
    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            label = self._codes.get(code)
            if label is not None:
                if _learner_above(frame.f_back):
                    self.calls.setdefault(label)
                return
            if code in self._op_codes:  # torch.ops.aten.<name>(...) or .<name>.default(...)
                op = frame.f_locals.get("self")
                name = str(getattr(op, "__name__", "")).split(".")[0]
                if name in self.forbidden and _learner_above(frame.f_back):
                    self.calls.setdefault(f"torch.ops.aten.{name}")
                return
            if code.co_filename in self._lesson_files and _is_learner(frame.f_back):
                if code.co_name.startswith("<") or not code.co_flags & inspect.CO_NEWLOCALS:
                    return  # a module or class body run by an import
                self.calls.setdefault(_lesson_label(code))
        elif event == "c_call":
            try:
                label = self._builtins.get(arg)
            except TypeError:
                label = None
            if label is None:
                label = self._builtin_names.get(getattr(arg, "__qualname__", None) or "")
            if label is not None and _learner_above(frame):
                self.calls.setdefault(label)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Record calls for the duration of the block (the learner's object runs in it)."""
        self.calls = {}
        self.tampered = False
        _setprofile(self._hook)
        _thread_setprofile(self._hook)
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            if _getprofile() is not self._hook:
                self.tampered = True
            _setprofile(None)
            _thread_setprofile(None)  # type: ignore[arg-type]


def _guarded_objects() -> list[tuple[str, Any]]:
    import numpy
    import numpy.linalg
    import numpy.random
    import torch
    import torch.linalg
    import torch.nn
    import torch.nn.functional

    return [
        ("numpy", numpy),
        ("numpy.linalg", numpy.linalg),
        ("numpy.random", numpy.random),
        ("torch", torch),
        ("torch.nn", torch.nn),
        ("torch.nn.functional", torch.nn.functional),
        ("torch.linalg", torch.linalg),
        ("torch.Tensor", torch.Tensor),
        ("torch.nn.Module", torch.nn.Module),
    ]


def _library_dirs() -> tuple[str, ...]:
    import numpy
    import torch

    dirs = [Path(m.__file__).parent for m in (numpy, torch)]
    return tuple({str(d) for d in dirs} | {str(d.resolve()) for d in dirs})


# Attributes Python itself adds to a module as a side effect of ordinary use.
_BENIGN = {"__warningregistry__"}


class ModuleGuard:
    """Snapshot of numpy's and torch's attributes; reports and reverts changes."""

    def __init__(self) -> None:
        self._saved = [(label, obj, dict(vars(obj))) for label, obj in _guarded_objects()]
        self._library_dirs = _library_dirs()

    def check_and_restore(self) -> list[str]:
        """Names of the attributes changed, added or deleted since the snapshot (restored).

        Newly imported submodules (``import torch.distributions`` adds ``torch.distributions``)
        are not patches and are left alone.
        """
        changed: list[str] = []
        for label, obj, saved in self._saved:
            current = dict(vars(obj))
            for key, value in current.items():
                if key in _BENIGN:
                    continue
                if key not in saved:
                    if isinstance(value, ModuleType):
                        continue
                    changed.append(f"{label}.{key}")
                    _restore(obj, key, None, delete=True)
                elif value is not saved[key]:
                    if self._library_wrapper(value, saved[key]):
                        saved[key] = value  # e.g. torch._dynamo wrapping torch.manual_seed
                        continue
                    changed.append(f"{label}.{key}")
                    _restore(obj, key, saved[key])
            for key in saved.keys() - current.keys():
                changed.append(f"{label}.{key}")
                _restore(obj, key, saved[key])
        return changed

    def _library_wrapper(self, value: Any, original: Any) -> bool:
        """True when numpy or torch itself wrapped ``original`` (``functools.wraps`` from code
        inside those packages), as importing ``torch._dynamo`` does to ``torch.manual_seed``."""
        if getattr(value, "__wrapped__", None) is not original:
            return False
        filename = getattr(getattr(value, "__code__", None), "co_filename", "")
        return filename.startswith(self._library_dirs)


def _restore(obj: Any, key: str, value: Any, delete: bool = False) -> None:
    try:
        if delete:
            delattr(obj, key)
        else:
            setattr(obj, key, value)
    except (AttributeError, TypeError):
        pass  # a read-only attribute that changed anyway; it is still reported
