"""Lesson 08 (placement): assemble a block in a given order, the two residual orders, and a
Pre-LN transformer block."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..experiments.transformer import Block
from .core import Case, Exercise, answer, compare
from .registry import register

PLACEMENTS = ("before", "after")


# ----------------------------------------------------------------------------------------------
# 08.assemble_block
# ----------------------------------------------------------------------------------------------


def _block_parts(case: Case):
    m = case.meta
    torch.manual_seed(m["seed"])
    if m["kind"] == "mlp":
        layer = nn.Linear(m["fan_in"], m["width"])
        norm = nn.BatchNorm1d(m["width"]) if m["norm"] == "batch" else nn.LayerNorm(m["width"])
    else:
        layer = nn.Conv2d(m["fan_in"], m["width"], 3, padding=1)
        norm = nn.BatchNorm2d(m["width"]) if m["norm"] == "batch" else nn.GroupNorm(1, m["width"])
    with torch.no_grad():  # a non-trivial affine part, so the order shows in the output
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[m["act"]]
    g = torch.Generator().manual_seed(m["seed"] + 1)
    shape = (m["n"], m["fan_in"]) if m["kind"] == "mlp" else (m["n"], m["fan_in"], 5, 5)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    return layer, norm, act, x


def _run_assemble(obj, case: Case):
    layer, norm, act, x = _block_parts(case)
    try:
        block = obj(layer, norm, act, case.meta["placement"])
    except ValueError:
        return "ValueError"
    if case.meta["placement"] not in PLACEMENTS:
        return "no error"
    if not isinstance(block, nn.Module):
        raise TypeError(f"assemble_block must return an nn.Module, got {type(block).__name__}")
    given = {id(p) for mod in (layer, norm, act) for p in mod.parameters()}
    uses_parts = {id(p) for p in block.parameters()} == given
    block.train()
    out = block(x)
    return {"output": out.detach(), "uses_given_parts": uses_parts}


def _assemble_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    cases = []
    if not hidden:
        specs = [
            ("mlp", "batch", "relu", "before"),
            ("mlp", "batch", "relu", "after"),
            ("cnn", "batch", "tanh", "after"),
            ("mlp", "layer", "sigmoid", "before"),
        ]
    else:
        specs = [
            (
                str(rng.choice(["mlp", "cnn"])),
                str(rng.choice(["batch", "layer"])),
                str(rng.choice(["relu", "tanh", "sigmoid"])),
                p,
            )
            for p in PLACEMENTS
            for _ in range(2)
        ]
    for kind, norm, act, placement in specs:
        meta = dict(
            kind=kind,
            norm=norm,
            act=act,
            placement=placement,
            seed=int(rng.integers(1 << 30)),
            n=int(rng.integers(4, 17)),
            fan_in=int(rng.integers(2, 9)),
            width=int(rng.integers(2, 9)),
        )
        cases.append(Case(label=f"{kind}, {norm} norm, {act}, placement={placement!r}", meta=meta))
    cases.append(
        Case(
            label="placement='middle' must raise ValueError",
            meta=dict(
                kind="mlp",
                norm="batch",
                act="relu",
                placement="middle",
                seed=3,
                n=4,
                fan_in=3,
                width=3,
            ),
        )
    )
    return cases


def _assemble_diagnose(got, expected, case: Case):
    if isinstance(expected, str):
        if got != expected:
            return (
                f"placement={case.meta['placement']!r} should raise ValueError naming the "
                "allowed placements, as torch does for a bad argument"
            )
        return None
    if not isinstance(got, dict):
        return None
    if not got.get("uses_given_parts", True):
        return (
            "the block must reuse the layer, norm and activation it is given (their "
            "parameters), not create new ones"
        )
    other = "after" if case.meta["placement"] == "before" else "before"
    layer, norm, act, x = _block_parts(case)
    wrong = answer("08", "assemble_block")()(layer, norm, act, other).train()(x).detach()
    if compare(got["output"], wrong, atol=1e-5, rtol=1e-4) is None:
        return (
            f"the output is that of placement={other!r}: for {case.meta['placement']!r} the "
            "order should be "
            + (
                "layer -> norm -> act"
                if case.meta["placement"] == "before"
                else "layer -> act -> norm"
            )
        )
    return None


# ----------------------------------------------------------------------------------------------
# 08.residual_forward
# ----------------------------------------------------------------------------------------------


def _residual_parts(case: Case):
    m = case.meta
    torch.manual_seed(m["seed"])
    d = m["width"]
    fc1, fc2 = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
    bn1, bn2 = nn.BatchNorm1d(d), nn.BatchNorm1d(d)
    with torch.no_grad():
        for bn in (bn1, bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(m["seed"] + 1)
    x = torch.randn(m["n"], d, generator=g) + 0.3
    upstream = torch.randn(m["n"], d, generator=g)
    return x, fc1, bn1, fc2, bn2, upstream


def _run_residual(obj, case: Case):
    x, fc1, bn1, fc2, bn2, upstream = _residual_parts(case)
    x.requires_grad_(True)
    out = obj(x, fc1, bn1, fc2, bn2, case.meta["variant"])
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"residual_forward must return a tensor, got {type(out).__name__}")
    (out * upstream).sum().backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return {"output": out.detach(), "grad_x": grad.detach()}


def _residual_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    sizes = (
        [(8, 4), (16, 6)]
        if not hidden
        else [(int(rng.integers(3, 20)), int(rng.integers(2, 10))) for _ in range(2)]
    )
    cases = []
    for variant in ("original", "preact"):
        for n, d in sizes:
            cases.append(
                Case(
                    label=f"variant={variant!r}, x of shape ({n}, {d})",
                    meta=dict(variant=variant, n=n, width=d, seed=int(rng.integers(1 << 30))),
                )
            )
    return cases


def _residual_diagnose(got, expected, case: Case):
    if not isinstance(got, dict) or "output" not in got:
        return None
    x, fc1, bn1, fc2, bn2, _ = _residual_parts(case)
    other = "preact" if case.meta["variant"] == "original" else "original"
    wrong = answer("08", "residual_forward")()(x, fc1, bn1, fc2, bn2, other).detach()
    if compare(got["output"], wrong, atol=1e-5, rtol=1e-4) is None:
        return f"the output is that of variant={other!r}; swap the two orders"
    if case.meta["variant"] == "preact":
        no_skip = fc2(F.relu(bn2(fc1(F.relu(bn1(x)))))).detach()
        if compare(got["output"], no_skip, atol=1e-5, rtol=1e-4) is None:
            return "the output misses the skip connection: add x to the branch"
    return None


# ----------------------------------------------------------------------------------------------
# 08.PreLNBlock
# ----------------------------------------------------------------------------------------------


def _reference_state(case: Case) -> dict:
    m = case.meta
    torch.manual_seed(m["seed"])
    ref = Block(m["d"], m["heads"], m["d_ff"], norm_position="pre")
    with torch.no_grad():
        for ln in (ref.ln1, ref.ln2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.3, 0.3)
    return ref.state_dict()


def _pre_ln_input(case: Case):
    m = case.meta
    g = torch.Generator().manual_seed(m["seed"] + 1)
    x = torch.randn(m["n"], m["t"], m["d"], generator=g) * 3 + 1
    upstream = torch.randn(m["n"], m["t"], m["d"], generator=g)
    return x, upstream


def _run_pre_ln(obj, case: Case):
    m = case.meta
    block = obj(m["d"], m["heads"], m["d_ff"])
    if not isinstance(block, nn.Module):
        raise TypeError(f"PreLNBlock(...) must be an nn.Module, got {type(block).__name__}")
    state = _reference_state(case)
    mine = set(block.state_dict())
    if mine != set(state):
        missing = sorted(set(state) - mine)
        extra = sorted(mine - set(state))
        raise ValueError(
            "PreLNBlock's parameters should be ln1, attn (SelfAttention), ln2 and ff "
            f"(FeedForward); missing {missing[:4]}, unexpected {extra[:4]}"
        )
    block.load_state_dict(state)
    block.train()
    x, upstream = _pre_ln_input(case)
    x.requires_grad_(True)
    out = block(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"forward must return a tensor, got {type(out).__name__}")
    (out * upstream).sum().backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return {"output": out.detach(), "grad_x": grad.detach()}


def _pre_ln_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    specs = (
        [(2, 5, 8, 2, 16), (3, 7, 16, 4, 32)]
        if not hidden
        else [
            (
                int(rng.integers(1, 5)),
                int(rng.integers(2, 10)),
                int(d),
                int(h),
                int(rng.integers(4, 40)),
            )
            for d, h in [(8, 2), (12, 3), (16, 4)]
        ]
    )
    return [
        Case(
            label=f"x of shape ({n}, {t}, {d}), {h} heads, d_ff={f}",
            meta=dict(n=n, t=t, d=d, heads=h, d_ff=f, seed=int(rng.integers(1 << 30))),
        )
        for n, t, d, h, f in specs
    ]


def _pre_ln_diagnose(got, expected, case: Case):
    if not isinstance(got, dict) or "output" not in got:
        return None
    m = case.meta
    post = Block(m["d"], m["heads"], m["d_ff"], norm_position="post")
    post.load_state_dict(_reference_state(case))
    x, _ = _pre_ln_input(case)
    with torch.no_grad():
        wrong = post(x)
    if compare(got["output"], wrong, atol=1e-4, rtol=1e-4) is None:
        return (
            "this is the Post-LN order, LN(x + f(x)); a Pre-LN block normalizes the input of "
            "each sub-layer and adds the result to the un-normalized x: x + f(LN(x))"
        )
    return None


register(
    Exercise(
        id="08.assemble_block",
        name="assemble_block",
        points=1,
        title="Assemble layer, norm and activation in the order a placement names",
        reference=answer("08", "assemble_block"),
        cases=_assemble_cases,
        run=_run_assemble,
        diagnose=_assemble_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=(),
        hints=(
            "The placement only decides the order of the three modules you are given. "
            "Which torch container runs modules one after another and keeps the very "
            "modules you pass it?",
            "nn.Sequential(a, b, c) runs a, then b, then c. 'before' means the norm "
            "comes before the activation: layer, norm, act; 'after': layer, act, norm.",
            "Anything else: raise ValueError(f\"placement must be 'before' or "
            "'after', got {placement!r}\").",
        ),
    ),
    Exercise(
        id="08.residual_forward",
        name="residual_forward",
        points=2,
        title="The original and the pre-activation residual block, forward",
        reference=answer("08", "residual_forward"),
        cases=_residual_cases,
        run=_run_residual,
        diagnose=_residual_diagnose,
        atol=1e-5,
        rtol=1e-4,
        forbidden=(),
        hints=(
            "Write each variant as a branch added to x. In which variant does "
            "something happen after the addition, and where do the batch norms sit "
            "relative to the linear layers?",
            "Original: the branch is fc1 -> bn1 -> relu -> fc2 -> bn2; add x; then "
            "relu. Pre-activation: the branch is bn1 -> relu -> fc1 -> bn2 -> relu -> "
            "fc2; add x; nothing after the addition.",
            "Use F.relu (torch.nn.functional) for the activations; the modules are "
            "given, so the function builds nothing.",
        ),
    ),
    Exercise(
        id="08.PreLNBlock",
        name="PreLNBlock",
        points=3,
        title="A Pre-LN transformer block",
        reference=answer("08", "PreLNBlock"),
        cases=_pre_ln_cases,
        run=_run_pre_ln,
        diagnose=_pre_ln_diagnose,
        atol=1e-4,
        rtol=1e-4,
        # the course's own Block(norm_position="pre") is this exercise's answer
        forbidden=("Block",),
        hints=(
            "Pre-LN normalizes the input of each sub-layer, never the residual stream "
            "itself. Which four submodules does the block need, under which names (the "
            "check loads weights by name)?",
            "In __init__ (after super().__init__()): self.ln1 = nn.LayerNorm(d_model), "
            "self.attn = SelfAttention(d_model, n_heads), self.ln2 = "
            "nn.LayerNorm(d_model), self.ff = FeedForward(d_model, d_ff).",
            "forward: x = x + self.attn(self.ln1(x)), then x = x + "
            "self.ff(self.ln2(x)); the stack normalizes the stream once, after the "
            "last block.",
        ),
    ),
)
