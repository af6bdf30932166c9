"""Lesson 11 (normalization in today's architectures): QK-norm attention, adaLN-Zero and
scaled weight standardization.

The answers live in :mod:`course_utils.answers.lesson11` and are imported lazily by the
``reference`` callables and the diagnoses (both run in the checker's process). The ``run``
drivers run wherever the learner's object lives, so they build every weight and input from
the case's seed with plain torch, never from the answers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..experiments.transformer import SelfAttention
from .core import Case, Exercise, compare
from .registry import register

BIG = 100.0  # the input scale of the logit-bound test


def _answers():
    from ..answers import lesson11

    return lesson11


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _param_shapes(module: nn.Module) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in module.state_dict().items()))


def _require_module(obj, name: str) -> None:
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{name}(...) must be an nn.Module, got {type(obj).__name__}")


def _load(module: nn.Module, state: dict, name: str, layout: str) -> None:
    """Load ``state`` into the learner's module, explaining a mismatch of names or shapes."""
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in state.items()}
    if mine != want:
        missing = sorted(set(want) - set(mine))
        extra = sorted(set(mine) - set(want))
        wrong = sorted(k for k in set(mine) & set(want) if mine[k] != want[k])
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}")
        if extra:
            parts.append(f"unexpected {extra[:4]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} has shape {mine[k]}, expected {want[k]}")
        raise ValueError(f"{name}'s parameters should be {layout}; " + "; ".join(parts))
    module.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# 11.QKNormAttention
# ----------------------------------------------------------------------------------------------

QK_LAYOUT = (
    "those of SelfAttention (qkv, out) plus q_norm and k_norm, each nn.LayerNorm(d_model // "
    "n_heads)"
)


def _qk_state(case: Case, zero_bias: bool = False) -> dict:
    """The reference weights of a case: SelfAttention's, plus LayerNorm gains and biases."""
    m = case.meta
    torch.manual_seed(m["seed"])
    state = dict(SelfAttention(m["d"], m["heads"]).state_dict())
    g = _generator(m["seed"] + 1)
    d_head = m["d"] // m["heads"]
    for name in ("q_norm", "k_norm"):
        state[f"{name}.weight"] = torch.empty(d_head).uniform_(0.5, 2.0, generator=g)
        bias = torch.empty(d_head).uniform_(-0.5, 0.5, generator=g)
        state[f"{name}.bias"] = torch.zeros(d_head) if zero_bias else bias
    return state


def _qk_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    m = case.meta
    g = _generator(m["seed"] + 2)
    x = torch.randn(m["n"], m["t"], m["d"], generator=g) * 3 + 1
    return x, torch.randn(m["n"], m["t"], m["d"], generator=g)


def _qk_bound(case: Case) -> float:
    """sqrt(d_head) * max|gain_q| * max|gain_k|: the largest |q·k|/sqrt(d_head) possible when
    q and k are layer-normalized per head (norm <= sqrt(d_head) before the gains), biases 0."""
    state = _qk_state(case, zero_bias=True)
    d_head = case.meta["d"] // case.meta["heads"]
    gq, gk = state["q_norm.weight"].abs().max(), state["k_norm.weight"].abs().max()
    return float(math.sqrt(d_head) * gq * gk)


def _run_qk(cls, case: Case) -> dict:
    m = case.meta
    attn = cls(m["d"], m["heads"], causal=m["causal"])
    _require_module(attn, "QKNormAttention")
    if not callable(getattr(attn, "logits", None)):
        raise TypeError("QKNormAttention needs SelfAttention's logits(x): subclass SelfAttention")
    _load(attn, _qk_state(case), "QKNormAttention", QK_LAYOUT)
    x, upstream = _qk_inputs(case)
    x.requires_grad_(True)
    out = attn(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"forward must return a tensor, got {type(out).__name__}")
    (out * upstream).sum().backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    with torch.no_grad():
        logits = attn.logits(x.detach())
        attn.load_state_dict(_qk_state(case, zero_bias=True))
        big = attn.logits(x.detach() * BIG)
    return {
        "output": out.detach(),
        "grad of x": grad.detach(),
        "logits": logits,
        f"largest |logit| for inputs x {BIG:g}": float(big.abs().max()),
    }


def _qk_variant(case: Case, which: str) -> torch.Tensor:
    """The output of a typical mistake, from the same weights (checker's side)."""
    m = case.meta
    ref = _answers().QKNormAttention(m["d"], m["heads"], causal=m["causal"])
    ref.load_state_dict(_qk_state(case))
    if which == "not causal":
        ref.causal = not m["causal"]
    else:
        norm_q, norm_k = which in ("q only", "both"), which in ("k only", "both")
        base_project = SelfAttention.project

        def project(x):
            q, k, v = base_project(ref, x)
            return (ref.q_norm(q) if norm_q else q), (ref.k_norm(k) if norm_k else k), v

        ref.project = project
    x, _ = _qk_inputs(case)
    with torch.no_grad():
        return ref(x)


def _qk_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict) or "output" not in got:
        return None
    key = f"largest |logit| for inputs x {BIG:g}"
    bound = _qk_bound(case)
    if isinstance(got.get(key), (int, float)) and got[key] > bound * (1 + 1e-3):
        return (
            f"with inputs 100 times larger the logits reach {got[key]:.4g}, above the bound "
            f"sqrt(d_head) * max|q gain| * max|k gain| = {bound:.4g} that layer-normalized "
            "q and k must respect: normalize q and k (per head, over D/H) before q·k"
        )
    if compare(got["output"], expected["output"], atol=1e-4, rtol=1e-4) is None:
        return None
    messages = {
        "neither": "q and k are not normalized: apply q_norm to q and k_norm to k",
        "q only": "only q is normalized: apply k_norm to k too",
        "k only": "only k is normalized: apply q_norm to q too",
        "not causal": (
            "the causal mask is wrong: pass causal on to SelfAttention.__init__ "
            "(super().__init__(d_model, n_heads, causal=causal))"
        ),
    }
    for which, msg in messages.items():
        if compare(got["output"], _qk_variant(case, which), atol=1e-4, rtol=1e-4) is None:
            return msg
    return None


def _qk_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(2, 5, 16, 4, False), (3, 6, 12, 2, True), (1, 4, 8, 1, True)]
    else:
        specs = []
        for causal in (False, True):
            heads = int(rng.choice([1, 2, 4]))
            d = heads * int(rng.integers(2, 7))
            specs.append((int(rng.integers(1, 4)), int(rng.integers(2, 9)), d, heads, causal))
    return [
        Case(
            label=f"x of shape ({n}, {t}, {d}), {h} heads, causal={c}",
            meta=dict(n=n, t=t, d=d, heads=h, causal=c, seed=int(rng.integers(1 << 30))),
        )
        for n, t, d, h, c in specs
    ]


# ----------------------------------------------------------------------------------------------
# 11.AdaLayerNorm
# ----------------------------------------------------------------------------------------------

ADA_LAYOUT = "modulation = nn.Linear(cond_dim, 3 * dim) only (the layer norm has no affine)"


def _ada_state(case: Case) -> dict:
    m = case.meta
    g = _generator(m["seed"])
    d, c = m["dim"], m["cond_dim"]
    return {
        "modulation.weight": torch.randn(3 * d, c, generator=g) * 0.5,
        "modulation.bias": torch.randn(3 * d, generator=g) * 0.5,
    }


def _ada_inputs(case: Case):
    m = case.meta
    g = _generator(m["seed"] + 1)
    shape = (m["n"], m["t"], m["dim"]) if m["t"] else (m["n"], m["dim"])
    x = torch.randn(shape, generator=g) * 2 + 0.5
    cond = torch.randn(m["n"], m["cond_dim"], generator=g)
    gate_shape = (m["n"], 1, m["dim"]) if m["t"] else (m["n"], m["dim"])
    return x, cond, torch.randn(shape, generator=g), torch.randn(gate_shape, generator=g)


def _run_ada(cls, case: Case) -> dict:
    m = case.meta
    norm = cls(m["dim"], m["cond_dim"])
    _require_module(norm, "AdaLayerNorm")
    x, cond, g_y, g_gate = _ada_inputs(case)
    out: dict = {"parameters": _param_shapes(norm)}

    def forward(x_, c_):
        res = norm(x_, c_)
        if not isinstance(res, (tuple, list)) or len(res) != 2:
            raise TypeError("forward(x, cond) must return two tensors: (y, gate)")
        return res

    with torch.no_grad():
        y0, gate0 = forward(x, cond)
    out["y at initialisation"], out["gate at initialisation"] = y0, gate0
    _load(norm, _ada_state(case), "AdaLayerNorm", ADA_LAYOUT)
    x.requires_grad_(True)
    cond.requires_grad_(True)
    y, gate = forward(x, cond)
    ((y * g_y).sum() + (gate * g_gate).sum()).backward()
    out.update(
        {
            "y": y.detach(),
            "gate": gate.detach(),
            "grad of x": x.grad if x.grad is not None else torch.zeros_like(x),
            "grad of cond": cond.grad if cond.grad is not None else torch.zeros_like(cond),
        }
    )
    return out


def _ada_formula(case: Case, order=("shift", "scale", "gate"), one_plus: bool = True):
    """y for the case's trained weights, with a chunk order and the (1 + scale) choice."""
    x, cond, _, _ = _ada_inputs(case)
    state = _ada_state(case)
    chunks = dict(
        zip(
            order, F.linear(cond, state["modulation.weight"], state["modulation.bias"]).chunk(3, -1)
        )
    )
    shift, scale = chunks["shift"], chunks["scale"]
    if x.dim() == 3:
        shift, scale = shift[:, None], scale[:, None]
    mean = x.mean(-1, keepdim=True)
    z = (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return z * ((1 + scale) if one_plus else scale) + shift


def _ada_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    if "parameters" in got and tuple(map(tuple, got["parameters"])) != expected["parameters"]:
        return f"the parameters should be {ADA_LAYOUT}; got {list(got['parameters'])}"
    for key in ("gate at initialisation", "y at initialisation"):
        if key not in got:
            continue
        shape, want = np.shape(got[key]), tuple(expected[key].shape)
        if tuple(shape) != want:
            return (
                f"{key.split()[0]} has shape {tuple(shape)}, expected {want} (for x of shape "
                "(N, T, D) give shift, scale and gate a T axis: gate[:, None] is (N, 1, D))"
            )
        if key.startswith("y") and np.allclose(np.asarray(got[key]), 0, atol=1e-6):
            return "y uses scale instead of (1 + scale): zero modulation must leave LN(x)"
        if compare(got[key], expected[key], atol=1e-4, rtol=1e-4):
            return (
                f"{key.split()[0]} is wrong before any training: start the modulation at zero "
                "(nn.init.zeros_ on its weight and bias), so y = LN(x) and gate = 0 and a block "
                "x + gate * f(y) begins as the identity"
            )
    if "y" in got and compare(got["y"], expected["y"], atol=1e-4, rtol=1e-4):
        import itertools

        for order in itertools.permutations(("shift", "scale", "gate")):
            for one_plus in (True, False):
                if (order, one_plus) == (("shift", "scale", "gate"), True):
                    continue
                if compare(got["y"], _ada_formula(case, order, one_plus), 1e-4, 1e-4) is None:
                    if not one_plus:
                        return (
                            "y uses scale instead of (1 + scale): zero modulation must leave LN(x)"
                        )
                    return (
                        "the three chunks are taken in the wrong order: modulation(cond).chunk(3, "
                        "dim=-1) gives shift, scale, gate (in that order)"
                    )
    return None


def _ada_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(4, 6, 3, 0), (2, 8, 5, 3), (1, 4, 2, 0)]
    else:
        specs = [
            (int(rng.integers(1, 6)), int(rng.integers(2, 10)), int(rng.integers(1, 6)), t)
            for t in (0, int(rng.integers(1, 5)))
        ]
    return [
        Case(
            label=f"x of shape {(n, t, d) if t else (n, d)}, cond of shape ({n}, {c})",
            meta=dict(n=n, dim=d, cond_dim=c, t=t, seed=int(rng.integers(1 << 30))),
        )
        for n, d, c, t in specs
    ]


# ----------------------------------------------------------------------------------------------
# 11.ScaledWSConv2d
# ----------------------------------------------------------------------------------------------

WS_LAYOUT = "weight and bias (as nn.Conv2d) and gain, of shape (out_channels, 1, 1, 1)"


def _ws_state(case: Case) -> dict:
    m = case.meta
    g = _generator(m["seed"])
    shape = (m["cout"], m["cin"], m["k"], m["k"])
    # filters with their own offsets and scales: standardization must remove both
    w = torch.randn(shape, generator=g) * torch.empty(m["cout"], 1, 1, 1).uniform_(
        0.05, 3, generator=g
    ) + torch.empty(m["cout"], 1, 1, 1).uniform_(-1, 1, generator=g)
    state = {"weight": w}
    if m["bias"]:
        state["bias"] = torch.randn(m["cout"], generator=g)
    state["gain"] = torch.empty(m["cout"], 1, 1, 1).uniform_(0.5, 1.5, generator=g)
    return state


def _ws_inputs(case: Case):
    m = case.meta
    g = _generator(m["seed"] + 1)
    x = torch.randn(m["n"], m["cin"], m["size"], m["size"], generator=g)
    return x


def _ws_make(cls, case: Case):
    m = case.meta
    return cls(
        m["cin"],
        m["cout"],
        m["k"],
        stride=m["stride"],
        padding=m["padding"],
        bias=m["bias"],
        gamma=m["gamma"],
    )


def _run_ws(cls, case: Case) -> dict:
    conv = _ws_make(cls, case)
    _require_module(conv, "ScaledWSConv2d")
    out: dict = {"parameters": _param_shapes(conv)}
    gain = dict(conv.named_parameters()).get("gain")
    out["gain at initialisation"] = (
        gain.detach().clone() if gain is not None else torch.zeros(case.meta["cout"], 1, 1, 1)
    )
    _load(conv, _ws_state(case), "ScaledWSConv2d", WS_LAYOUT)
    x = _ws_inputs(case).requires_grad_(True)
    y = conv(x)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"forward must return a tensor, got {type(y).__name__}")
    g = _generator(case.meta["seed"] + 2)
    upstream = torch.randn(y.shape, generator=g)
    (y * upstream).sum().backward()
    params = dict(conv.named_parameters())
    out["output"] = y.detach()
    out["grad of x"] = x.grad if x.grad is not None else torch.zeros_like(x)
    for name in ("weight", "gain"):
        grad = params[name].grad
        out[f"grad of {name}"] = grad if grad is not None else torch.zeros_like(params[name])
    return out


def _ws_variant(case: Case, which: str) -> torch.Tensor:
    m = case.meta
    state = _ws_state(case)
    w = state["weight"]
    fan_in = w[0].numel()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=which == "unbiased", keepdim=True)
    centred = w if which == "no mean" else w - mean
    scale = 1.0 if which == "no fan-in" else fan_in
    gamma = 1.0 if which == "no gamma" else m["gamma"]
    w_hat = state["gain"] * gamma * centred / torch.sqrt(scale * (var + 1e-6))
    return F.conv2d(_ws_inputs(case), w_hat, state.get("bias"), m["stride"], m["padding"])


def _ws_diagnose(got, expected, case: Case) -> str | None:
    if not isinstance(got, dict):
        return None
    if "parameters" in got and tuple(map(tuple, got["parameters"])) != expected["parameters"]:
        return f"the parameters should be {WS_LAYOUT}; got {list(got['parameters'])}"
    if "gain at initialisation" in got and compare(
        got["gain at initialisation"], expected["gain at initialisation"]
    ):
        return "gain should start at 1 (torch.ones(out_channels, 1, 1, 1))"
    if (
        "output" not in got
        or compare(got["output"], expected["output"], atol=1e-4, rtol=1e-4) is None
    ):
        return None
    messages = {
        "no fan-in": "the weights are not divided by sqrt(fan_in) (fan_in = C_in * kH * kW)",
        "no gamma": "gamma (the activation's gain) is missing from the weight",
        "no mean": "the mean of each filter is not subtracted",
        "unbiased": "use the biased variance (unbiased=False), as the formula says",
    }
    for which, msg in messages.items():
        if compare(got["output"], _ws_variant(case, which), atol=1e-4, rtol=1e-4) is None:
            return msg
    return None


def _ws_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    # (n, cin, cout, k, size, stride, padding, bias, gamma)
    if not hidden:
        specs = [
            (2, 3, 4, 3, 6, 1, 1, True, 1.7139),
            (1, 2, 3, 1, 4, 1, 0, False, 1.0),
            (2, 4, 2, 3, 7, 2, 1, True, 2.0),
        ]
    else:
        specs = [
            (
                int(rng.integers(1, 4)),
                int(rng.integers(1, 6)),
                int(rng.integers(1, 6)),
                int(k),
                int(rng.integers(4, 9)),
                int(rng.integers(1, 3)),
                int(k // 2),
                bool(rng.random() < 0.5),
                float(rng.uniform(0.5, 2.5)),
            )
            for k in (1, 3, 3)
        ]
    return [
        Case(
            label=f"ScaledWSConv2d({ci}, {co}, {k}, stride={s}, padding={p}, bias={b}, "
            f"gamma={gm:.4g}), x of shape ({n}, {ci}, {sz}, {sz})",
            meta=dict(
                n=n,
                cin=ci,
                cout=co,
                k=k,
                size=sz,
                stride=s,
                padding=p,
                bias=b,
                gamma=gm,
                seed=int(rng.integers(1 << 30)),
            ),
        )
        for n, ci, co, k, sz, s, p, b, gm in specs
    ]


register(
    Exercise(
        id="11.QKNormAttention",
        name="QKNormAttention",
        points=3,
        title="QK-norm: layer-normalize each head's queries and keys before attention",
        reference=lambda: _answers().QKNormAttention,
        cases=_qk_cases,
        run=_run_qk,
        diagnose=_qk_diagnose,
        atol=1e-4,
        rtol=1e-4,
        forbidden=(),
        hints=(
            "SelfAttention.project(x) returns q, k and v already split into heads, each of "
            "shape (N, H, T, D/H); your subclass only has to change q and k on their way out.",
            "In __init__ create two nn.LayerNorm(d_model // n_heads) modules named q_norm and "
            "k_norm (a LayerNorm acts on the last dimension, which is each head's D/H "
            "features).",
            "project(x): q, k, v = super().project(x); return self.q_norm(q), self.k_norm(k), v.",
        ),
    ),
    Exercise(
        id="11.AdaLayerNorm",
        name="AdaLayerNorm",
        points=3,
        title="adaLN-Zero: layer norm with shift, scale and gate from a condition, zero at init",
        reference=lambda: _answers().AdaLayerNorm,
        cases=_ada_cases,
        run=_run_ada,
        diagnose=_ada_diagnose,
        atol=1e-4,
        rtol=1e-4,
        forbidden=(),
        hints=(
            "One Linear layer turns the condition into all three modulations at once; what "
            "must its weight and bias be so that the block starts as the identity?",
            "self.modulation = nn.Linear(cond_dim, 3 * dim), then nn.init.zeros_ on its weight "
            "and bias. In forward: shift, scale, gate = self.modulation(cond).chunk(3, dim=-1); "
            "for x of shape (N, T, D) add a T axis to each: shift[:, None].",
            "Normalize x over its last axis without an affine of its own: (x - mean) / "
            "sqrt(var + eps) with the biased variance, eps = 1e-6; return y * (1 + scale) + "
            "shift and the gate.",
        ),
    ),
    Exercise(
        id="11.ScaledWSConv2d",
        name="ScaledWSConv2d",
        points=2,
        title="Scaled weight standardization (NF-ResNets) in a Conv2d",
        reference=lambda: _answers().ScaledWSConv2d,
        cases=_ws_cases,
        run=_run_ws,
        diagnose=_ws_diagnose,
        atol=1e-4,
        rtol=1e-4,
        forbidden=(),
        hints=(
            "Each output channel's filter W[i] (shape C_in x kH x kW) is standardized on its "
            "own, at every forward pass: the stored weight keeps any scale.",
            "mean and variance over dims (1, 2, 3) with keepdim=True; fan_in = W[0].numel(). "
            "The gain is nn.Parameter(torch.ones(out_channels, 1, 1, 1)).",
            "w_hat = gain * gamma * (W - mean) / sqrt(fan_in * (var + eps)) with the biased "
            "variance; then return self._conv_forward(x, w_hat, self.bias).",
        ),
    ),
)
