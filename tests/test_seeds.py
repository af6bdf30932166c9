"""Every generator a claim depends on is seeded through course_utils.seeds, so the claims
audit's COURSE_SEED_OFFSET really shifts them all (and nothing else)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils import seeds
from course_utils.data import badly_scaled_2d, with_outliers
from course_utils.experiments import covariate_shift, group_norm, sequence, small_batch
from course_utils.experiments import transformer as T

ROOT = Path(__file__).resolve().parents[1]
# creating a generator: torch.manual_seed(...), torch.Generator().manual_seed(...),
# np.random.default_rng(...), np.random.seed(...), random.seed(...), RandomState(...)
GENERATOR = re.compile(
    r"(torch\.manual_seed\(|Generator\(\)\.manual_seed\(|default_rng\(|np\.random\.seed\("
    r"|(?<![\w.])random\.seed\(|RandomState\()"
)
# where the course deliberately does not shift: the fixed MNIST split, the exercises' test
# cases, answers (a learner's function seeds itself; its seed arrives already shifted, through
# capstone.measure) and the grader's seeds and sandbox, the widgets and benchmarks (no
# claims), and the capstone's broken run (seeded like a learner's function)
NOT_SHIFTED = {
    "course_utils/data/__init__.py": ["default_rng(_SPLIT_SEED)"],
    "course_utils/experiments/capstone.py": ["torch.manual_seed(seed)"],
}
SKIPPED_DIRS = ("grading", "exercises", "answers", "sandbox", "widgets")
SKIPPED_FILES = ("seeds.py", "bench.py", "bench_grader.py")


def _course_files():
    for path in sorted((ROOT / "course_utils").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name in SKIPPED_FILES or any(f"/{d}/" in rel for d in SKIPPED_DIRS):
            continue
        yield rel, path.read_text()


def test_no_generator_is_created_outside_the_seeding_module():
    found = []
    for rel, text in _course_files():
        for line in text.splitlines():
            code = line.split("#")[0]
            if GENERATOR.search(code) and not any(ok in code for ok in NOT_SHIFTED.get(rel, [])):
                found.append(f"{rel}: {line.strip()}")
    assert not found, "create generators with course_utils.seeds:\n" + "\n".join(found)


def test_solution_notebooks_seed_through_the_course():
    """Outside exercises (the learner's own code), notebook cells seed with cu.set_seed /
    cu.seeds.rng / cu.seeds.generator, never with torch or NumPy directly."""
    found = []
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or "exercise" in cell.metadata.get("tags", []):
                continue
            for line in cell.source.splitlines():
                if GENERATOR.search(line.split("#")[0]):
                    found.append(f"{path.name} cell {i}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.fixture
def offset(monkeypatch):
    def set_offset(value):
        monkeypatch.setenv(seeds.ENV, str(value))

    return set_offset


def test_offset_is_read_at_every_call(offset):
    offset(0)
    assert seeds.shifted(3) == 3
    offset(100)
    assert seeds.offset() == 100 and seeds.shifted(3) == 103
    offset("")
    assert seeds.offset() == 0
    offset("x")
    with pytest.raises(ValueError, match="COURSE_SEED_OFFSET"):
        seeds.offset()


def _draws():
    """One cheap draw from every kind of generator the experiments create."""
    data = cu.load_mnist()
    x = data.x_train[:32]
    cu.set_seed(0)
    return {
        "set_seed -> torch": torch.randn(3),
        "set_seed -> numpy": np.random.rand(3),
        "seeds.rng": seeds.rng(0).normal(size=3),
        "seeds.rng sequence": seeds.rng([0, 1]).normal(size=3),
        "seeds.generator": torch.randn(3, generator=seeds.generator(0)),
        "make_mlp": cu.make_mlp(depth=1, width=4, seed=0).blocks[0].linear.weight[0],
        "make_cnn": cu.make_cnn(channels=(2,), seed=0).blocks[0].conv.weight.flatten()[:3],
        "batches": next(cu.batches(x, data.y_train[:32], 4, seed=0))[1],
        "badly_scaled_2d": badly_scaled_2d(n=5, seed=0)[0],
        "with_outliers": with_outliers(n=20, seed=0),
        "small_batch.sample_order": small_batch.sample_order(0, 50, 10),
        "MLPEnsemble": next(
            small_batch.MLPEnsemble(["batch"], [0.1], [0], in_features=4).parameters()
        )[0],
        "covariate_shift.depth_profile": covariate_shift.depth_profile(x, depth=2, width=8)["std"],
        "sequence.batch_dependence": sequence.batch_dependence(n=4, d=4, trials=1)["batch"],
        "transformer": T.TinyTransformer(n_layers=1, d_model=8, n_heads=2, seq_len=4).pos,
        "group_norm.CNNEnsemble": next(
            group_norm.CNNEnsemble(
                [group_norm.Member("batch", 0.1, 0)], channels=(2,), image_size=8
            ).parameters()
        ).flatten()[:3],
    }


def _same(a, b) -> bool:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def test_the_offset_shifts_every_generator_and_only_while_set(offset):
    offset(0)
    base = _draws()
    offset(100)
    moved = _draws()
    unchanged = [k for k in base if _same(base[k], moved[k])]
    assert not unchanged, f"not shifted by COURSE_SEED_OFFSET: {unchanged}"
    offset(0)
    again = _draws()
    assert all(_same(base[k], again[k]) for k in base)


def test_the_data_split_does_not_shift(offset):
    offset(0)
    a = cu.load_mnist().y_test[:50].clone()
    cu.data._split_cached.cache_clear()
    offset(300)
    b = cu.load_mnist().y_test[:50]
    assert torch.equal(a, b)
