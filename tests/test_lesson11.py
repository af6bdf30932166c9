"""Lesson 11 (normalization in today's architectures): the exercises (references pass visible
and hidden cases; typical mistakes get the specific verdict), the transformer extensions
(causal mask, q/k hook, LayerScale, DeepNorm), the experiment modules, the decision guide's
map and the notebook's layout."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from course_utils.answers import lesson11 as A
from course_utils.exercises import get_exercise, lesson_exercises, verify
from course_utils.experiments import (
    conditional,
    guide,
    norm_free,
    qk_norm,
    residual_scaling,
    transformer,
)
from course_utils.experiments.transformer import Block, SelfAttention

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / "11_modern_architectures.ipynb"

# ----------------------------------------------------------------------------------------------
# exercises
# ----------------------------------------------------------------------------------------------

EXERCISES = ["11.QKNormAttention", "11.AdaLayerNorm", "11.ScaledWSConv2d"]


def test_lesson_registers_its_three_exercises():
    assert [ex.id for ex in lesson_exercises("11")] == EXERCISES


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_reference_passes_visible_and_hidden_cases(exercise_id):
    ex = get_exercise(exercise_id)
    ref = ex.reference()
    assert verify(ex, ref).passed
    for seed in range(4):
        cases = ex.cases(np.random.default_rng(seed), True)
        assert cases
        for case in cases:
            assert ex.judge(ex.run(ref, case), case) is None, case.label


def _message(exercise_id, obj) -> str:
    verdict = verify(exercise_id, obj)
    assert not verdict.passed
    return verdict.message


class _OnlyQ(A.QKNormAttention):
    def project(self, x):
        q, k, v = SelfAttention.project(self, x)
        return self.q_norm(q), k, v


class _DropsCausal(A.QKNormAttention):
    def __init__(self, d_model, n_heads, causal=False):
        super().__init__(d_model, n_heads, causal=False)


class _WholeWidth(SelfAttention):
    def __init__(self, d_model, n_heads, causal=False):
        super().__init__(d_model, n_heads, causal)
        self.q_norm, self.k_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)


@pytest.mark.parametrize(
    "wrong, pattern",
    [
        (_OnlyQ, r"above the bound"),
        (_DropsCausal, r"causal mask is wrong"),
        (_WholeWidth, r"k_norm\.\w+ has shape \(\d+,\), expected"),
    ],
)
def test_qk_norm_mistakes_get_specific_verdicts(wrong, pattern):
    assert re.search(pattern, _message("11.QKNormAttention", wrong))


class _AdaNotZero(A.AdaLayerNorm):
    def __init__(self, dim, cond_dim, eps=1e-6):
        super().__init__(dim, cond_dim, eps)
        nn.init.normal_(self.modulation.weight)


class _AdaOrder(A.AdaLayerNorm):
    def forward(self, x, cond):
        scale, shift, gate = self.modulation(cond).chunk(3, -1)
        if x.dim() == 3:
            shift, scale, gate = shift[:, None], scale[:, None], gate[:, None]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale) + shift, gate


class _AdaNoOne(A.AdaLayerNorm):
    def forward(self, x, cond):
        shift, scale, gate = self.modulation(cond).chunk(3, -1)
        if x.dim() == 3:
            shift, scale, gate = shift[:, None], scale[:, None], gate[:, None]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * scale + shift, gate


class _AdaFlatGate(A.AdaLayerNorm):
    def forward(self, x, cond):
        y, _ = super().forward(x, cond)
        return y, self.modulation(cond).chunk(3, -1)[2]


@pytest.mark.parametrize(
    "wrong, pattern",
    [
        (_AdaNotZero, r"start the modulation at zero"),
        (_AdaOrder, r"wrong order"),
        (_AdaNoOne, r"\(1 \+ scale\)"),
        (_AdaFlatGate, r"gate has shape \(2, 8\), expected \(2, 1, 8\)"),
    ],
)
def test_ada_layer_norm_mistakes_get_specific_verdicts(wrong, pattern):
    assert re.search(pattern, _message("11.AdaLayerNorm", wrong))


def _ws_wrong(kind):
    class Wrong(A.ScaledWSConv2d):
        def standardized_weight(self):
            w = self.weight
            mean = w.mean((1, 2, 3), keepdim=True)
            var = w.var((1, 2, 3), unbiased=kind == "unbiased", keepdim=True)
            centred = w if kind == "no mean" else w - mean
            fan_in = 1 if kind == "no fan-in" else w[0].numel()
            gamma = 1.0 if kind == "no gamma" else self.gamma
            return self.gain * gamma * centred / torch.sqrt(fan_in * (var + self.eps))

    return Wrong


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("unbiased", r"biased variance"),
        ("no mean", r"mean of each filter"),
        ("no gamma", r"gamma"),
        ("no fan-in", r"sqrt\(fan_in\)"),
    ],
)
def test_scaled_ws_mistakes_get_specific_verdicts(kind, pattern):
    assert re.search(pattern, _message("11.ScaledWSConv2d", _ws_wrong(kind)))


def test_scaled_ws_standardizes_every_filter():
    conv = A.ScaledWSConv2d(3, 4, 3, gamma=2.0)
    with torch.no_grad():
        conv.weight.mul_(7).add_(1.5)
    w = conv.standardized_weight()
    assert torch.allclose(w.sum((1, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(w.pow(2).sum((1, 2, 3)), torch.full((4,), 4.0), atol=1e-3)


# ----------------------------------------------------------------------------------------------
# transformer extensions (lesson 08's behaviour is unchanged by default)
# ----------------------------------------------------------------------------------------------


def _attention_by_hand(attn: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    n, t, d = x.shape
    s = attn.logits(x)
    if attn.causal:
        s = s.masked_fill(~torch.ones(t, t).tril().bool(), float("-inf"))
    _, _, v = attn.project(x)
    y = s.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(n, t, d))


@pytest.mark.parametrize("causal", [False, True])
def test_forward_is_softmax_of_the_logits(causal):
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, causal=causal)
    x = torch.randn(2, 7, 16)
    assert attn.logits(x).shape == (2, 4, 7, 7)
    assert torch.allclose(attn(x), _attention_by_hand(attn, x), atol=1e-5)


def test_causal_attention_ignores_later_tokens():
    torch.manual_seed(0)
    attn = SelfAttention(8, 2, causal=True)
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, 4:] += 5.0
    assert torch.allclose(attn(x)[:, :4], attn(changed)[:, :4], atol=1e-6)
    assert not torch.allclose(attn(x)[:, 4:], attn(changed)[:, 4:])


def test_default_block_keeps_lesson_08s_parameters_and_formula():
    torch.manual_seed(0)
    for position in ("pre", "post"):
        b = Block(16, 4, 32, position)
        assert sorted(b.state_dict()) == sorted(
            [
                "ln1.weight",
                "ln1.bias",
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.out.weight",
                "attn.out.bias",
                "ln2.weight",
                "ln2.bias",
                "ff.0.weight",
                "ff.0.bias",
                "ff.2.weight",
                "ff.2.bias",
            ]
        )
        x = torch.randn(2, 5, 16)
        if position == "pre":
            h = x + b.attn(b.ln1(x))
            expected = h + b.ff(b.ln2(h))
        else:
            h = b.ln1(x + b.attn(x))
            expected = b.ln2(h + b.ff(h))
        assert torch.equal(b(x), expected)


def test_layer_scale_and_deepnorm_options():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    zero = Block(16, 4, 32, "pre", layer_scale=0.0)
    assert zero.ls1.shape == (16,) and torch.equal(zero(x), x)  # gains at 0: the identity
    deep = Block(16, 4, 32, "post", residual_alpha=2.0)
    plain = Block(16, 4, 32, "post")
    plain.load_state_dict(deep.state_dict())
    h = deep.ln1(2.0 * x + deep.attn(x))
    assert torch.allclose(deep(x), deep.ln2(2.0 * h + deep.ff(h)))
    assert not torch.allclose(deep(x), plain(x))
    with pytest.raises(ValueError):
        Block(16, 4, 32, "post", layer_scale=0.1)
    with pytest.raises(ValueError):
        Block(16, 4, 32, "pre", residual_alpha=2.0)


# ----------------------------------------------------------------------------------------------
# experiments
# ----------------------------------------------------------------------------------------------


def test_copy_batch_repeats_the_tokens_after_a_separator():
    x, y = qk_norm.copy_batch(5, n=4, vocab=10, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert (x[:, 4] == qk_norm.SEP).all() and torch.equal(x[:, 5:], x[:, :3])
    assert torch.equal(y[:, 4:], x[:, :4])  # the copied half of the targets is the first half
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
    assert (x[:, :4] >= 1).all()


def test_train_copy_records_a_logit_per_step_and_qk_norm_respects_its_bound():
    model = qk_norm.copy_model("QK-norm", n=4, d_model=16, n_heads=2, n_layers=1, seed=0)
    run = qk_norm.train_copy(model, lr=0.01, steps=5, batch_size=8)
    assert run.loss.shape == run.max_logit.shape == (5,) and np.isfinite(run.loss).all()
    tokens, _ = qk_norm.copy_batch(16, 4, 32, torch.Generator().manual_seed(1))
    measured = qk_norm.max_logits(model, tokens)
    assert measured.shape == (1,)
    assert measured[0] <= qk_norm.logit_bound(model.blocks[0].attn)
    with pytest.raises(ValueError):
        qk_norm.copy_model("other")


def test_conditioned_mlp_arms():
    x = torch.randn(6, 196)
    c0, c1 = torch.zeros(6, dtype=torch.long), torch.full((6,), 3)
    for arm in conditional.ARMS:
        torch.manual_seed(0)
        model = conditional.ConditionedMLP(arm, width=16, in_features=196)
        out0, out1 = model(x, c0), model(x, c1)
        assert out0.shape == (6, 10)
        # the modulation starts at zero: FiLM and adaLN ignore the condition at initialisation
        ignores = arm in ("FiLM", "adaLN (gate at 1)", "adaLN-Zero")
        assert torch.allclose(out0, out1) == ignores, arm
    assert torch.equal(
        conditional.shift_targets(torch.tensor([7, 2]), torch.tensor([5, 1])), torch.tensor([2, 3])
    )
    with pytest.raises(ValueError):
        conditional.ConditionedMLP("other")


def test_deepnorm_init_and_stream_rms():
    alpha, beta = residual_scaling.deepnorm_constants(8)
    assert math.isclose(alpha, 16**0.25) and math.isclose(beta, 64**-0.25)
    plain = residual_scaling.make_stack("Post-LN", n_layers=2, seed=0)
    deep = residual_scaling.make_stack("Post-LN + DeepNorm", n_layers=2, seed=0)
    a, b = residual_scaling.deepnorm_constants(2)
    assert deep.blocks[0].residual_alpha == a
    d = 32
    pw, dw = plain.blocks[0].attn.qkv.weight, deep.blocks[0].attn.qkv.weight
    assert torch.allclose(dw[: 2 * d], pw[: 2 * d]) and torch.allclose(dw[2 * d :], b * pw[2 * d :])
    assert torch.allclose(deep.blocks[1].ff[2].weight, b * plain.blocks[1].ff[2].weight)
    tokens, _ = transformer.reversal_batch(8, 12, 12, torch.Generator().manual_seed(0))
    rms = {
        arm: residual_scaling.stream_rms(residual_scaling.make_stack(arm, 4, seed=0), tokens)
        for arm in residual_scaling.ARMS
    }
    assert all(r.shape == (4,) for r in rms.values())
    assert rms["Pre-LN + LayerScale"][-1] < rms["Pre-LN"][-1]


def test_ghost_batch_norm_matches_batch_norm_per_group():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    ghost = norm_free.GhostBatchNorm2d(3, group=2)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5)
        ghost.bias.uniform_(-1, 1)
    bn = nn.BatchNorm2d(3)
    bn.load_state_dict(ghost.state_dict())
    expected = torch.cat([bn(chunk) for chunk in x.split(2)])
    assert torch.allclose(ghost(x), expected, atol=1e-5)
    # running statistics: one momentum step towards the mean of the groups' statistics
    groups = x.view(4, 2, 3, 4, 4)
    mean = groups.mean(dim=(1, 3, 4)).mean(0)
    var = groups.var(dim=(1, 3, 4), unbiased=True).mean(0)
    assert torch.allclose(ghost.running_mean, 0.1 * mean, atol=1e-5)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * var, atol=1e-5)
    whole = norm_free.GhostBatchNorm2d(3)
    assert torch.allclose(whole(x), nn.BatchNorm2d(3)(x), atol=1e-5)
    with pytest.raises(ValueError):
        norm_free.GhostBatchNorm2d(3, group=3)(x)
    with pytest.raises(ValueError):
        norm_free.GhostBatchNorm2d(3, group=0)


def test_adaptive_grad_clip_bounds_each_unit():
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))  # row norms 5 and 0.5
    w.grad = torch.tensor([[1.0, 0.0], [0.0, 0.001]])
    scalar = nn.Parameter(torch.tensor(0.0))
    scalar.grad = torch.tensor(1.0)
    norm_free.adaptive_grad_clip_([w, scalar], clipping=0.1)
    assert torch.allclose(w.grad[0], torch.tensor([0.5, 0.0]))  # clipped to 0.1 * 5
    assert torch.allclose(w.grad[1], torch.tensor([0.0, 0.001]))  # small enough: unchanged
    assert math.isclose(float(scalar.grad), 0.1 * 1e-3, rel_tol=1e-5)  # |w| below eps


def test_relu_gain_and_residual_cnn():
    assert math.isclose(norm_free.relu_gain(), math.sqrt(2 / (1 - 1 / math.pi)))
    assert abs(norm_free.relu_gain(samples=200_000) - norm_free.relu_gain()) < 0.02
    x = torch.randn(4, 1, 14, 14)
    for arm, kwargs in norm_free.ARMS.items():
        model = norm_free.ResidualCNN(seed=0, **kwargs)
        assert model(x).shape == (4, 10), arm
    nf = norm_free.ResidualCNN("nf", seed=0)
    stem = nf.stem(x)
    assert torch.equal(nf.blocks(stem), stem)  # SkipInit: every block starts as the identity
    with pytest.raises(ValueError):
        norm_free.ResidualCNN("layer")


def test_train_cnn_runs_and_flags_nothing_on_a_short_run():
    from course_utils import load_mnist
    from course_utils.experiments.placement import downsample

    data = downsample(load_mnist(flatten=False))
    losses, acc = norm_free.train_cnn(
        norm_free.ResidualCNN("nf", channels=4, blocks=1), data, 0.1, steps=3, agc=0.01
    )
    assert losses.shape == (3,) and np.isfinite(losses).all() and 0 <= acc <= 1


# ----------------------------------------------------------------------------------------------
# the guide and the map agree; the notebook shows the map
# ----------------------------------------------------------------------------------------------

NORM_NAMES = (
    "BatchNorm",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "InstanceNorm",
    "QK-norm",
    "LayerScale",
    "adaLN-Zero",
    "scaled weight standardization",
)


@pytest.mark.parametrize("family", [f for f in guide.MAP if f.key], ids=lambda f: f.family)
def test_every_mapped_family_agrees_with_the_guide(family):
    rec = guide.recommend(family.key, family.batch)
    names = [n for n in NORM_NAMES if n in family.norm]
    assert names, family.norm
    assert any(n in rec.to_text() for n in names), (family.norm, rec.to_text())
    assert set(family.lessons) <= set(rec.lessons), (family.lessons, rec.lessons)


def test_every_new_architecture_has_a_family_in_the_map():
    keys = {f.key for f in guide.MAP}
    for arch in ("llm", "vit", "diffusion_unet", "dit", "style_transfer"):
        assert arch in keys


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_notebook_shows_the_guides_map():
    text = "\n".join(_source(c) for c in _notebook()["cells"] if c["cell_type"] == "markdown")
    assert guide.map_table() in text


def test_notebook_layout():
    nb = _notebook()
    assert nb["metadata"]["course"]["lesson"] == "11"
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code[0]["metadata"].get("tags") == ["setup"]
    assert code[-1]["metadata"].get("tags") == ["progress"]
    found = []
    for i, c in enumerate(cells):
        ex = c["metadata"].get("course", {}).get("exercise")
        if ex:
            found.append(ex)
            assert c["metadata"]["tags"] == ["exercise"]
            assert "### BEGIN SOLUTION" in _source(c) and "### END SOLUTION" in _source(c)
            assert _source(cells[i + 1]).strip() == f'check("{ex}", {ex.split(".")[1]})'
        if "claim" in c["metadata"].get("tags", []):
            assert "Claim check" in _source(cells[i - 1])
            assert "claim(" in _source(c) and c["metadata"]["course"]["claim"].startswith("11.")
    assert found == EXERCISES
    assert sum("claim" in c["metadata"].get("tags", []) for c in cells) == 4


_NO_ANSWERS = """
import importlib.abc, json, sys

class NoAnswers(importlib.abc.MetaPathFinder):  # the grader's sandbox has no answers
    def find_spec(self, name, path=None, target=None):
        if name == "course_utils.answers" or name.startswith("course_utils.answers."):
            raise ImportError(f"{name} is not available here")
        return None

sys.meta_path.insert(0, NoAnswers())
import pkgutil
import course_utils.experiments as E
for m in pkgutil.iter_modules(E.__path__):
    __import__(f"course_utils.experiments.{m.name}")
for path in sys.argv[1:]:
    nb = json.load(open(path, encoding="utf-8"))
    for cell in nb["cells"]:
        if "setup" in cell["metadata"].get("tags", []):
            src = "".join(cell["source"])
            exec("\\n".join(l for l in src.splitlines() if not l.startswith("%")), {})
print("ok")
"""


def test_experiments_and_setup_cells_import_without_the_answers():
    """The grader's sandbox hides course_utils.answers and runs every notebook's setup cells
    (and preloads every experiment module): none may import an answer when imported."""
    import subprocess
    import sys

    notebooks = sorted(str(p) for p in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    out = subprocess.run(
        [sys.executable, "-c", _NO_ANSWERS, *notebooks],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
