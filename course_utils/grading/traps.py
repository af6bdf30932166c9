"""Runtime traps, installed in the sandboxed child before any learner code runs.

* :class:`CallTrap` records, while the learner's object runs, every call made from the
  learner's code (directly or through other code) to torch's own normalization (the
  forbidden functions are wrapped, and a profile hook also sees the builtins and the ``nn``
  modules' code however they were reached) and into the course's answers
  (``course_utils/reference``, the lesson modules).
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

__all__ = ["CallTrap", "ModuleGuard", "LEARNER_FILE_PREFIX", "ANSWER_LABEL"]

LEARNER_FILE_PREFIX = "<submission cell"
ANSWER_LABEL = "the course's answers"
_PACKAGE = Path(__file__).resolve().parents[1]


def _dotted_name(filename: str, code: CodeType) -> str:
    """``course_utils.reference.functional.batch_norm`` for a code object of the package."""
    try:
        rel = Path(filename).resolve().relative_to(_PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
    except ValueError:
        module = Path(filename).stem
    # co_qualname is Python 3.11+; on 3.10 a method is named without its class
    return f"{module}.{getattr(code, 'co_qualname', code.co_name)}"


def _is_learner(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(LEARNER_FILE_PREFIX)


def _learner_above(frame: FrameType | None) -> bool:
    while frame is not None:
        if _is_learner(frame):
            return True
        frame = frame.f_back
    return False


class CallTrap:
    """Records forbidden calls made while :meth:`armed` is active.

    Args:
        forbidden: names of torch functions and ``nn`` modules (``Exercise.forbidden``).
    Attributes:
        calls: what was called during the last armed period, as labels such as
            ``"torch.nn.functional.layer_norm"`` or ``"the course's answers (batch_norm)"``.
        tampered: True when the learner's code replaced the profile hook.
    """

    def __init__(self, forbidden: Iterable[str]) -> None:
        self.forbidden = set(forbidden)
        self.calls: dict[str, None] = {}  # insertion-ordered set
        self.tampered = False
        self._armed = False
        self._codes: dict[CodeType, str] = {}
        self._builtins: dict[Any, str] = {}
        ref = str(_PACKAGE / "reference")
        self._answer_dirs = (ref, str(_PACKAGE.parent / "solutions"))
        self._lesson_files = {str(p) for p in (_PACKAGE / "exercises").glob("lesson*.py")}
        self._hook = self._profile  # one bound method, so identity checks work

    # -- installation ------------------------------------------------------------------
    def install(self) -> None:
        """Wrap torch's forbidden functions and index the code the profile hook watches."""
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        self._index_torch_modules()  # before wrapping: the wrappers share one code object
        for mod, prefix in ((torch, "torch"), (F, "torch.nn.functional")):
            for name in self.forbidden:
                fn = getattr(mod, name, None)
                if fn is None or isinstance(fn, type) or not callable(fn):
                    continue
                label = f"{prefix}.{name}"
                code = getattr(fn, "__code__", None)
                if code is not None:
                    self._codes[code] = label
                else:
                    try:
                        self._builtins[fn] = label
                    except TypeError:  # unhashable callable: the wrapper still records it
                        pass
                setattr(mod, name, self._wrap(fn, label))
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

    def _index_torch_modules(self) -> None:
        """Watch forbidden names wherever torch defines them (``torch._refs``,
        ``torch.optim.swa_utils.update_bn``...): the profile hook sees them however reached.
        About 5 ms for torch's ~800 loaded modules."""
        for modname, mod in list(sys.modules.items()):
            if modname != "torch" and not modname.startswith("torch."):
                continue
            namespace = getattr(mod, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name in self.forbidden.intersection(namespace):
                fn = namespace[name]
                if isinstance(fn, type) or not callable(fn):
                    continue
                code = getattr(fn, "__code__", None)
                try:
                    if code is not None:
                        self._codes.setdefault(code, f"{modname}.{name}")
                    else:
                        self._builtins.setdefault(fn, f"{modname}.{name}")
                except TypeError:  # an unhashable callable
                    pass

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
            fname = code.co_filename
            if code.co_name.startswith("<") or not code.co_flags & inspect.CO_NEWLOCALS:
                return  # module or class body run by an import: the calls that follow count
            caller = frame.f_back
            entering = caller is None or not caller.f_code.co_filename.startswith(self._answer_dirs)
            if (fname.startswith(self._answer_dirs) and entering and _learner_above(caller)) or (
                fname in self._lesson_files and _is_learner(caller)
            ):
                self.calls.setdefault(f"{_dotted_name(fname, code)} ({ANSWER_LABEL})")
        elif event == "c_call":
            try:
                label = self._builtins.get(arg)
            except TypeError:
                return
            if label is not None and _learner_above(frame):
                self.calls.setdefault(label)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Record calls for the duration of the block (the learner's object runs in it)."""
        self.calls = {}
        self.tampered = False
        old = sys.getprofile()
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
            if sys.getprofile() is not self._hook:
                self.tampered = True
            sys.setprofile(old)
            threading.setprofile(None)  # type: ignore[arg-type]


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


_LIBRARY_DIRS = _library_dirs()

# Attributes Python itself adds to a module as a side effect of ordinary use.
_BENIGN = {"__warningregistry__"}


class ModuleGuard:
    """Snapshot of numpy's and torch's attributes; reports and reverts changes."""

    def __init__(self) -> None:
        self._saved = [(label, obj, dict(vars(obj))) for label, obj in _guarded_objects()]

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
                    if _library_wrapper(value, saved[key]):
                        saved[key] = value  # e.g. torch._dynamo wrapping torch.manual_seed
                        continue
                    changed.append(f"{label}.{key}")
                    _restore(obj, key, saved[key])
            for key in saved.keys() - current.keys():
                changed.append(f"{label}.{key}")
                _restore(obj, key, saved[key])
        return changed


def _library_wrapper(value: Any, original: Any) -> bool:
    """True when numpy or torch itself wrapped ``original`` (``functools.wraps`` from code
    inside those packages), as importing ``torch._dynamo`` does to ``torch.manual_seed``."""
    if getattr(value, "__wrapped__", None) is not original:
        return False
    filename = getattr(getattr(value, "__code__", None), "co_filename", "")
    return filename.startswith(_LIBRARY_DIRS)


def _restore(obj: Any, key: str, value: Any, delete: bool = False) -> None:
    try:
        if delete:
            delattr(obj, key)
        else:
            setattr(obj, key, value)
    except (AttributeError, TypeError):
        pass  # a read-only attribute that changed anyway; it is still reported
