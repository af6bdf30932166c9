"""An environment check that says plainly what is missing and how to fix it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass

__all__ = ["Finding", "check_environment", "report"]

# (module, pinned version, why the course needs it)
_PACKAGES = (
    ("torch", "2.13.0", "every lesson trains small networks"),
    ("numpy", "2.4.6", "the reference implementations"),
    ("matplotlib", "3.11.2", "all figures"),
    ("ipywidgets", "8.1.9", "the live widgets' controls"),
    ("anywidget", "0.11.0", "the live widgets' figures (the canvas that fits the page)"),
    ("ipympl", "0.10.0", "interactive figures in your own cells (%matplotlib widget)"),
)


@dataclass
class Finding:
    """One line of the environment report: what was checked, whether it is fine, and why."""

    name: str
    ok: bool
    detail: str


def check_environment() -> list[Finding]:
    """Check Python, the pinned packages, the embedded data and torch's thread setting."""
    out = [
        Finding(
            "python",
            sys.version_info >= (3, 10),
            f"{sys.version.split()[0]} (3.10 or newer needed)",
        )
    ]
    for mod, pinned, why in _PACKAGES:
        # read the installed version without importing: importing ipympl, for one,
        # switches matplotlib's backend as a side effect
        try:
            if importlib.util.find_spec(mod) is None:
                raise ModuleNotFoundError(mod)
            version = importlib.metadata.version(mod).split("+")[0]
        except Exception as e:  # any failure means "missing" to a learner
            out.append(
                Finding(
                    mod,
                    False,
                    f"missing ({type(e).__name__}); needed for {why}. "
                    "Fix: run `make setup` in the course folder.",
                )
            )
            continue
        note = "" if version == pinned else f" (tested with {pinned}; probably fine)"
        out.append(Finding(mod, True, version + note))
    try:
        from .data import load_mnist

        d = load_mnist()
        out.append(
            Finding(
                "MNIST",
                True,
                f"embedded, md5 verified; {len(d.x_train)} train / {len(d.x_test)} test images",
            )
        )
    except Exception as e:
        out.append(Finding("MNIST", False, f"{type(e).__name__}: {e}"))
    try:
        import torch

        out.append(
            Finding(
                "torch threads",
                True,
                f"{torch.get_num_threads()} (one thread is fastest for the course's small models)",
            )
        )
    except Exception:
        pass
    return out


def report() -> bool:
    """Print the environment check; True when everything the course needs is there."""
    findings = check_environment()
    width = max(len(f.name) for f in findings)
    for f in findings:
        print(f"{'ok     ' if f.ok else 'MISSING'}  {f.name:<{width}}  {f.detail}")
    ok = all(f.ok for f in findings)
    print(
        "\nEverything the course needs is here."
        if ok
        else "\nSomething is missing: see the lines marked MISSING above."
    )
    return ok
