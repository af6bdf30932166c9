"""``claim(...)``: the one-line assertion a lesson's claim-check cell makes about a measurement.

A claim check asserts an empirical effect that could be false: a measured statistic on one
side of a threshold. ``claim`` prints the statistic, the threshold and the *margin* (how far
the statistic is from the threshold, as a fraction of the threshold), and raises
``AssertionError`` when the claim fails, so the course's tests fail with it::

    claim("BN's largest stable lr / plain net's best lr", stable_bn / best_plain, ">=", 10)
    # -> claim holds: BN's largest stable lr / plain net's best lr = 30 >= 10 (margin +200%)

The claims audit (``python -m course_utils.claims``) re-runs every claim-check cell with
shifted seeds. It sets ``COURSE_CLAIMS_RECORD`` to a file: then ``claim`` appends what it
measured to that file as one JSON line and does not raise, so one failing claim does not hide
the others. A claim is *robust* when it holds on every seed with a margin of at least 10%.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass

__all__ = ["claim", "ClaimResult", "begin", "RECORD_ENV", "MIN_MARGIN", "OPS"]

RECORD_ENV = "COURSE_CLAIMS_RECORD"
MIN_MARGIN = 0.10  # the audit's bar: every seed at least 10% of the threshold away from it
OPS = (">", ">=", "<", "<=")

_current_claim: str | None = None  # set by the audit before each claim-check cell


@dataclass
class ClaimResult:
    """One measured claim.

    ``margin`` is ``(value - threshold) / scale`` for ``>``/``>=`` and
    ``(threshold - value) / scale`` for ``<``/``<=`` (``scale`` defaults to ``|threshold|``):
    positive when the claim holds, the fraction of the threshold it holds by.
    """

    statement: str
    value: float
    op: str
    threshold: float
    scale: float
    margin: float
    holds: bool
    claim_id: str | None = None

    def __str__(self) -> str:
        word = "holds" if self.holds else "FAILS"
        return (
            f"claim {word}: {self.statement} = {_fmt(self.value)} {self.op} "
            f"{_fmt(self.threshold)} (margin {self.margin:+.0%})"
        )


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.4g}"


def begin(claim_id: str | None) -> None:
    """Name the claim whose checks follow (the audit calls this before each claim cell)."""
    global _current_claim
    _current_claim = claim_id


def claim(
    statement: str, value: float, op: str, threshold: float, *, scale: float | None = None
) -> ClaimResult:
    """Assert that a measured ``value`` is ``op`` ``threshold``, and report the margin.

    Args:
        statement: what ``value`` is, in words ("BN accuracy minus LN accuracy at batch 2").
        value: the measured statistic (a number; NaN always fails).
        op: one of ``">"``, ``">="``, ``"<"``, ``"<="``.
        threshold: the bound the claim states.
        scale: what the margin is a fraction of; default ``|threshold|`` (required when the
            threshold is 0).
    Returns:
        The :class:`ClaimResult` (also printed).
    Raises:
        AssertionError: the claim does not hold (not in audit mode, where it is recorded).
        ValueError: a bad ``op``, or a threshold of 0 without ``scale``.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    value, threshold = float(value), float(threshold)
    if scale is None:
        if threshold == 0:
            raise ValueError(f"{statement!r}: a threshold of 0 needs scale= for the margin")
        scale = abs(threshold)
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if math.isnan(value):
        holds, margin = False, -math.inf
    else:
        holds = {
            ">": value > threshold,
            ">=": value >= threshold,
            "<": value < threshold,
            "<=": value <= threshold,
        }[op]
        diff = value - threshold if op in (">", ">=") else threshold - value
        margin = diff / scale if math.isfinite(diff) else math.copysign(math.inf, diff)
    result = ClaimResult(statement, value, op, threshold, scale, margin, holds, _current_claim)
    print(result, flush=True)
    record = os.environ.get(RECORD_ENV)
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")
        return result
    if not holds:
        sys.stdout.flush()
        raise AssertionError(str(result))
    return result
