"""claim(): one line per claim with its margin; the claims audit (python -m course_utils.claims)
finds claim cells by their tag, runs them with shifted seeds, records every statement without
stopping at the first failure, and reports robust / fragile; the notebooks follow the rules."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nbformat
import pytest

from course_utils import claim_check, claims
from course_utils.claim_check import RECORD_ENV, begin, claim

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))


# --------------------------------------------------------------------------------------------
# claim()
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_record(monkeypatch):
    monkeypatch.delenv(RECORD_ENV, raising=False)
    begin(None)
    yield
    begin(None)


@pytest.mark.parametrize(
    "value, op, threshold, holds, margin",
    [
        (3.0, ">", 2.0, True, 0.5),
        (1.0, ">", 2.0, False, -0.5),
        (2.0, ">=", 2.0, True, 0.0),
        (0.01, "<", 0.02, True, 0.5),
        (0.03, "<", 0.02, False, -0.5),
        (-3.0, "<", -2.0, True, 0.5),
        (2.0, "<=", 2.0, True, 0.0),
    ],
)
def test_claim_holds_or_fails_with_its_margin(value, op, threshold, holds, margin, capsys):
    if holds:
        r = claim("the statistic", value, op, threshold)
    else:
        with pytest.raises(AssertionError, match="claim FAILS: the statistic"):
            claim("the statistic", value, op, threshold)
        r = None
    out = capsys.readouterr().out
    assert ("claim holds" if holds else "claim FAILS") in out and "margin" in out
    if r is not None:
        assert r.holds and math.isclose(r.margin, margin)


def test_claim_margin_scale_nan_and_bad_arguments():
    assert math.isclose(claim("x", -2.0, "<", 0, scale=1.0).margin, 2.0)
    with pytest.raises(ValueError, match="scale="):
        claim("x", 1.0, ">", 0)
    with pytest.raises(ValueError, match="op must be"):
        claim("x", 1.0, "==", 1.0)
    with pytest.raises(AssertionError):
        claim("x", float("nan"), "<", 1.0)
    assert claim("x", float("inf"), ">", 1.0).margin == math.inf


def test_audit_mode_records_every_claim_and_does_not_raise(tmp_path, monkeypatch):
    record = tmp_path / "r.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(record))
    begin("99.demo")
    claim("passes", 3, ">", 2)
    r = claim("fails", 1, ">", 2)  # recorded, not raised
    assert not r.holds
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [row["statement"] for row in rows] == ["passes", "fails"]
    assert rows[1] | {"margin": None} == {
        "statement": "fails",
        "value": 1.0,
        "op": ">",
        "threshold": 2.0,
        "scale": 2.0,
        "margin": None,
        "holds": False,
        "claim_id": "99.demo",
    }


# --------------------------------------------------------------------------------------------
# the notebooks follow the rules
# --------------------------------------------------------------------------------------------


def _heading_before(cells, i):
    for cell in reversed(cells[:i]):
        if cell.cell_type == "markdown":
            return cell.source
    return ""


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name[:2])
def test_claim_cells_are_tagged_named_and_use_claim(path):
    nb = nbformat.read(path, as_version=4)
    ids = claims.claim_cells(nb)  # raises on a missing or repeated id
    lesson = nb.metadata["course"]["lesson"]
    tagged = {i for i, _ in ids}
    assert all(cid.startswith(f"{lesson}.") for _, cid in ids)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        heading = _heading_before(nb.cells, i)
        after_claim_heading = re.search(r"^#+ Claim check", heading, re.M) is not None
        calls_claim = re.search(r"(?<![\w.])claim\(", cell.source) is not None
        if i in tagged:
            assert calls_claim, f"{path.name} cell {i}: a claim cell must call claim(...)"
            assert after_claim_heading, f"{path.name} cell {i}: no 'Claim check' heading above"
        else:
            assert not calls_claim, f"{path.name} cell {i}: claim(...) in an untagged cell"
            # a "Claim check" heading is followed by its claim cell, not by anything else
            prev_code = [j for j in range(i) if nb.cells[j].cell_type == "code"]
            md_between = (
                any(nb.cells[j].cell_type == "markdown" for j in range(prev_code[-1] + 1, i))
                if prev_code
                else True
            )
            assert not (after_claim_heading and md_between), (
                f"{path.name} cell {i}: follows a 'Claim check' heading but is not a claim cell"
            )


def test_no_check_of_a_definition_is_labelled_a_claim():
    """The identities the issue listed (and the like) are checks of definitions, never tagged
    as claims and never under a 'Claim check' heading."""
    definitions = 0
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        tagged = {i for i, _ in claims.claim_cells(nb)}
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and "Check of a definition" in _heading_before(nb.cells, i):
                definitions += 1
                assert i not in tagged, f"{path.name} cell {i}"
    assert definitions >= 6


def test_the_committed_report_lists_every_claim_as_robust():
    text = (ROOT / "docs" / "claims.md").read_text()
    ids = {cid for p in SOLUTIONS for _, cid in claims.claim_cells(nbformat.read(p, 4))}
    listed = set(re.findall(r"\| `([0-9]{2}\.[\w.-]+)` \|", text))
    assert ids <= listed, f"claims missing from docs/claims.md: {sorted(ids - listed)}"
    assert "| **fragile** |" not in text and " 0 fragile." in text and "No problems." in text
    assert "seed +0 | seed +100 | seed +200 | seed +300 | seed +400" in text


# --------------------------------------------------------------------------------------------
# the audit, end to end on a small notebook
# --------------------------------------------------------------------------------------------


def _demo_notebook(path: Path) -> Path:
    code = nbformat.v4.new_code_cell
    md = nbformat.v4.new_markdown_cell
    cells = [
        code("import course_utils as cu\nfrom course_utils import claim", metadata={}),
        md("### Claim check: the offset reaches the kernel"),
        code(
            'claim("seed offset seen by the notebook, plus 1", cu.seeds.offset() + 1, ">", 0.5)\n'
            'claim("a draw of seeds.rng(0), shifted", abs(cu.seeds.rng(0).normal()), "<", 100)',
            metadata={"tags": ["claim"], "course": {"claim": "99.offset"}},
        ),
        md("### Claim check: fragile on purpose"),
        code(
            'claim("holds only without an offset", cu.seeds.offset(), "<", 1, scale=1)\n'
            'claim("not recorded after a failing claim? it is", 1, ">", 0.5)',
            metadata={"tags": ["claim"], "course": {"claim": "99.fragile"}},
        ),
        md("### Claim check: this cell raises before it claims anything"),
        code(
            'raise RuntimeError("boom")',
            metadata={"tags": ["claim"], "course": {"claim": "99.raises"}},
        ),
        code('claim("outside a claim cell", 1, ">", 0.5)'),
        code("", metadata={"tags": ["progress"]}),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["course"] = {"lesson": "99"}
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_the_audit_shifts_seeds_records_everything_and_judges(tmp_path):
    nb_path = _demo_notebook(tmp_path / "99_demo.ipynb")
    rows, problems, runs = claims.audit([nb_path], [0, 100], jobs=2, progress=False)
    by = {r.statement: r for r in rows}
    offset_row = by["seed offset seen by the notebook, plus 1"]
    assert offset_row.values == {0: 1.0, 100: 101.0}  # the kernel saw each offset
    draws = by["a draw of seeds.rng(0), shifted"].values
    assert draws[0] != draws[100]
    assert offset_row.robust([0, 100]) and by["a draw of seeds.rng(0), shifted"].robust([0, 100])
    fragile = by["holds only without an offset"]
    assert fragile.holds == {0: True, 100: False} and not fragile.robust([0, 100])
    assert by["not recorded after a failing claim? it is"].holds == {0: True, 100: True}
    text = " | ".join(problems)
    assert "claim 99.raises recorded nothing" in text and "RuntimeError: boom" in text
    assert "outside a cell tagged 'claim'" in text
    assert len(runs) == 2 and all(r.seconds > 0 for r in runs)
    report = claims.report(rows, problems, runs, [0, 100])
    assert "| 99 | `99.fragile` | holds only without an offset | < 1 | 0 | 100 ✗ |" in report
    assert "**fragile**" in report and "## Problems" in report and "## Run times" in report
    assert "4 statements in 2 claims: 3 robust, 1 fragile." in report


def test_claim_cells_rejects_missing_and_repeated_ids():
    tag = {"tags": ["claim"]}
    nb = {"cells": [{"cell_type": "code", "metadata": tag, "source": ""}]}
    with pytest.raises(ValueError, match="no metadata.course.claim"):
        claims.claim_cells(nb)
    cell = {"cell_type": "code", "metadata": {**tag, "course": {"claim": "a"}}, "source": ""}
    with pytest.raises(ValueError, match="used by two cells"):
        claims.claim_cells({"cells": [cell, cell]})


def test_report_and_verdicts_from_rows():
    rows = [
        claims.Row(
            "01_x.ipynb",
            "01.a",
            "wide",
            ">",
            1.0,
            {0: 2.0, 100: 3.0},
            {0: 1.0, 100: 2.0},
            {0: True, 100: True},
        ),
        claims.Row(
            "01_x.ipynb",
            "01.a",
            "narrow",
            ">",
            1.0,
            {0: 1.05, 100: 2.0},
            {0: 0.05, 100: 1.0},
            {0: True, 100: True},
        ),
        claims.Row(
            "01_x.ipynb", "01.b", "missing on one seed", "<", 1.0, {0: 0.5}, {0: 0.5}, {0: True}
        ),
    ]
    assert rows[0].robust([0, 100]) and not rows[1].robust([0, 100])
    assert not rows[2].robust([0, 100]) and rows[2].min_margin([0, 100]) == -math.inf
    text = claims.report(rows, [], [], [0, 100])
    assert "3 statements in 2 claims: 1 robust, 2 fragile." in text
    assert (
        "| 01 | `01.b` | missing on one seed | < 1 | 0.5 | missing | -inf% | **fragile** |" in text
    )
    assert claim_check.MIN_MARGIN == 0.10
