"""Lesson 09's capstone: a training run with planted faults, the probes that find them, and how
a learner's fixed run is measured (the same way in the notebook and in the grader). The
trusted fix is an answer: :mod:`course_utils.answers.lesson09`.

The contract of the exercise: ``train_fixed(data, seed) -> nn.Module`` receives the *training*
split only (:class:`TrainingData`: raw pixel values 0-255, (N, 784), and labels) and returns a
trained model that maps raw (N, 784) pixels to (N, 10) logits, ready to serve. The model must
be an ``nn.Sequential`` of the layers in :data:`ALLOWED_LAYERS`: the learner's run is
summarised by :func:`train_and_describe` as that architecture plus its tensors (plain arrays,
no pickle), and :func:`assess` rebuilds it from the description and measures, for one seed:

- ``accuracy``: test accuracy of the rebuilt model in eval mode, on held-out images the
  training run never receives;
- ``in_eval_mode``: every module of the returned model was in eval mode, as served;
- ``first_layer_input``: mean and std of what the first Linear layer receives when the model
  is given raw test pixels (scaled inputs give values of order 1, raw pixels ~100);
- ``min_bn_batch``: the fewest values per channel any batch-norm layer normalized over while
  training (None when the model has no batch norm). Only the training run itself can observe
  this, so the grader takes it from the learner's process: a best-effort measurement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import MNISTSplit, batches, load_mnist

__all__ = [
    "Standardize",
    "TrainingData",
    "load_data",
    "training_data",
    "train_broken",
    "ALLOWED_LAYERS",
    "ModelNotAllowed",
    "describe_model",
    "rebuild_model",
    "train_and_describe",
    "CapstoneReport",
    "assess",
    "measure",
    "serve_one_at_a_time",
    "TARGET_ACCURACY",
    "MIN_BN_VALUES",
    "INPUT_MEAN_LIMIT",
    "INPUT_STD_RANGE",
]

TARGET_ACCURACY = 0.90
MIN_BN_VALUES = 16  # fewer values per channel than this make batch statistics too noisy
INPUT_MEAN_LIMIT = 3.0
INPUT_STD_RANGE = (0.2, 5.0)
MAX_PARAMETERS = 4_000_000  # a rebuilt model larger than this is refused (16 MB of float32)
MAX_LAYERS = 64
_MAX_WIDTH = 100_000


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics fitted on the training split, stored as buffers
    (so they move with the model and are saved in its state dict); any input shape."""

    def __init__(self, mean: torch.Tensor | float, std: torch.Tensor | float):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass
class TrainingData:
    """What ``train_fixed`` receives: ``x_train`` float32 (N, 784) raw pixels 0-255 and
    ``y_train`` int64 (N,) labels. The test split is kept back for the measurement."""

    x_train: torch.Tensor
    y_train: torch.Tensor

    def __repr__(self) -> str:
        shapes = tuple(self.x_train.shape), tuple(self.y_train.shape)
        return f"TrainingData(x_train: {shapes[0]}, y_train: {shapes[1]})"


def load_data() -> MNISTSplit:
    """The capstone's data: MNIST as raw pixels 0-255, flattened (8000 / 2000 x 784)."""
    return load_mnist("raw", flatten=True)


def training_data(data: MNISTSplit | None = None) -> TrainingData:
    """The training part of ``data`` (default: :func:`load_data`), as ``train_fixed`` gets it."""
    data = load_data() if data is None else data
    return TrainingData(data.x_train, data.y_train)


def train_broken(data: TrainingData | MNISTSplit, seed: int) -> nn.Module:
    """The run the learner is asked to fix (it has several faults; do not copy it)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(784, 128),
        nn.Tanh(),
        nn.BatchNorm1d(128),
        nn.Linear(128, 128),
        nn.Tanh(),
        nn.BatchNorm1d(128),
        nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stream = batches(data.x_train, data.y_train, batch_size=2, seed=seed)
    for _, (xb, yb) in zip(range(300), stream):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# --------------------------------------------------------------------------------------------
# the architecture whitelist: describe a model as plain data, rebuild it from that data
# --------------------------------------------------------------------------------------------


class ModelNotAllowed(ValueError):
    """A model (or a description of one) outside :data:`ALLOWED_LAYERS`."""


def _int(v: Any, lo: int = 1, hi: int = _MAX_WIDTH) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ModelNotAllowed(f"expected an integer in [{lo}, {hi}], got {v!r}")
    return v


def _float(v: Any, lo: float = -1e6, hi: float = 1e6) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi:
        raise ModelNotAllowed(f"expected a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ModelNotAllowed(f"expected True or False, got {v!r}")
    return v


def _momentum(v: Any) -> float | None:
    return None if v is None else _float(v, 0.0, 1.0)


def _shape(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 3:
        raise ModelNotAllowed(f"expected a shape of 1 to 3 sizes, got {v!r}")
    return tuple(_int(n) for n in v)


def _approximate(v: Any) -> str:
    if v not in ("none", "tanh"):
        raise ModelNotAllowed(f"GELU's approximate must be 'none' or 'tanh', got {v!r}")
    return v


# type name -> (class, {constructor argument: (how to read it from the module, validator)})
ALLOWED_LAYERS: dict[str, tuple[type, dict[str, tuple[Callable[[Any], Any], Callable]]]] = {
    "Standardize": (Standardize, {}),
    "Flatten": (
        nn.Flatten,
        {
            "start_dim": (lambda m: m.start_dim, lambda v: _int(v, -4, 4)),
            "end_dim": (lambda m: m.end_dim, lambda v: _int(v, -4, 4)),
        },
    ),
    "Linear": (
        nn.Linear,
        {
            "in_features": (lambda m: m.in_features, _int),
            "out_features": (lambda m: m.out_features, _int),
            "bias": (lambda m: m.bias is not None, _bool),
        },
    ),
    "BatchNorm1d": (
        nn.BatchNorm1d,
        {
            "num_features": (lambda m: m.num_features, _int),
            "eps": (lambda m: m.eps, lambda v: _float(v, 0.0, 1.0)),
            "momentum": (lambda m: m.momentum, _momentum),
            "affine": (lambda m: m.affine, _bool),
            "track_running_stats": (lambda m: m.track_running_stats, _bool),
        },
    ),
    "LayerNorm": (
        nn.LayerNorm,
        {
            "normalized_shape": (lambda m: list(m.normalized_shape), _shape),
            "eps": (lambda m: m.eps, lambda v: _float(v, 0.0, 1.0)),
            "elementwise_affine": (lambda m: m.elementwise_affine, _bool),
            "bias": (lambda m: getattr(m, "bias", None) is not None, _bool),
        },
    ),
    "ReLU": (nn.ReLU, {}),
    "Tanh": (nn.Tanh, {}),
    "Sigmoid": (nn.Sigmoid, {}),
    "SiLU": (nn.SiLU, {}),
    "Identity": (nn.Identity, {}),
    "GELU": (nn.GELU, {"approximate": (lambda m: m.approximate, _approximate)}),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": (lambda m: m.negative_slope, _float)}),
    "ELU": (nn.ELU, {"alpha": (lambda m: m.alpha, _float)}),
    "Dropout": (nn.Dropout, {"p": (lambda m: m.p, lambda v: _float(v, 0.0, 1.0))}),
}
_ALLOWED_TEXT = (
    "build the model as nn.Sequential(...) of " + ", ".join(ALLOWED_LAYERS) + " layers only"
)


def describe_model(model: Any) -> dict:
    """An ``nn.Sequential`` of allowed layers as plain data (what the grader rebuilds).

    Returns:
        ``{"layers": [{"type", "config", "training"}], "state": {state-dict key: array}}``;
        the arrays are NumPy copies of the parameters and buffers.
    Raises:
        ModelNotAllowed: anything else, with a sentence saying what is allowed.
    """
    if not isinstance(model, nn.Module):
        raise ModelNotAllowed(
            f"train_fixed returned {type(model).__name__}, not an nn.Module; {_ALLOWED_TEXT}"
        )
    if type(model) is not nn.Sequential:
        raise ModelNotAllowed(
            f"the model is a {type(model).__name__}, not an nn.Sequential; {_ALLOWED_TEXT}"
        )
    children = list(model.children())
    if not children or len(children) > MAX_LAYERS:
        raise ModelNotAllowed(f"the model has {len(children)} layers (1 to {MAX_LAYERS} allowed)")
    layers = []
    for i, m in enumerate(children):
        spec = ALLOWED_LAYERS.get(type(m).__name__)
        if spec is None or type(m) is not spec[0]:
            raise ModelNotAllowed(
                f"layer {i} is a {type(m).__module__}.{type(m).__name__}; {_ALLOWED_TEXT}"
            )
        config = {name: read(m) for name, (read, _) in spec[1].items()}
        layers.append({"type": type(m).__name__, "config": config, "training": bool(m.training)})
    state = {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}
    return {"layers": layers, "training": bool(model.training), "state": state}


def rebuild_model(description: Mapping) -> nn.Sequential:
    """The model :func:`describe_model` described, built from scratch (trusted code only).

    Every field is checked: layer types against :data:`ALLOWED_LAYERS`, constructor arguments
    by type and range, the tensors by name, shape and dtype, the size of the whole model.

    Raises:
        ModelNotAllowed: a description that is malformed or outside the whitelist.
    """
    if not isinstance(description, Mapping):
        raise ModelNotAllowed("the model description is not a dict")
    layers, state = description.get("layers"), description.get("state")
    if not isinstance(layers, (list, tuple)) or not 1 <= len(layers) <= MAX_LAYERS:
        raise ModelNotAllowed(f"the model must have 1 to {MAX_LAYERS} layers")
    if not isinstance(state, Mapping):
        raise ModelNotAllowed("the model's tensors are missing")
    modules: list[nn.Module] = []
    params = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or set(layer) != {"type", "config", "training"}:
            raise ModelNotAllowed(f"layer {i}: malformed description")
        spec = ALLOWED_LAYERS.get(layer["type"]) if isinstance(layer["type"], str) else None
        if spec is None:
            raise ModelNotAllowed(f"layer {i} is a {layer['type']!r}; {_ALLOWED_TEXT}")
        cls, fields = spec
        config = layer["config"]
        if not isinstance(config, Mapping) or set(config) != set(fields):
            raise ModelNotAllowed(f"layer {i} ({layer['type']}): malformed arguments")
        try:
            kwargs = {name: check(config[name]) for name, (_, check) in fields.items()}
        except ModelNotAllowed as e:
            raise ModelNotAllowed(f"layer {i} ({layer['type']}): {e}") from None
        if cls is nn.Linear:
            params += kwargs["in_features"] * kwargs["out_features"]
        elif cls is nn.LayerNorm:
            params += math.prod(kwargs["normalized_shape"])
        if params > MAX_PARAMETERS:
            raise ModelNotAllowed(f"the model has more than {MAX_PARAMETERS:,} parameters")
        if cls is Standardize:
            shapes = [np.shape(state.get(f"{i}.{b}")) for b in ("mean", "std")]
            if any(math.prod(s) > _MAX_WIDTH for s in shapes):
                raise ModelNotAllowed(f"layer {i} (Standardize): statistics too large")
            module: nn.Module = Standardize(torch.zeros(shapes[0]), torch.ones(shapes[1]))
        else:
            module = cls(**kwargs)
        module.train(_bool(layer["training"]))
        modules.append(module)
    model = nn.Sequential(*modules)
    expected = model.state_dict()
    if set(state) != set(expected):
        extra = sorted(set(state) ^ set(expected))[:3]
        raise ModelNotAllowed(f"the model's tensors do not match its layers ({extra})")
    loaded = {}
    for key, target in expected.items():
        value = state[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ModelNotAllowed(f"tensor {key} is not an array of numbers")
        if tuple(value.shape) != tuple(target.shape):
            raise ModelNotAllowed(
                f"tensor {key} has shape {tuple(value.shape)}, "
                f"its layer needs {tuple(target.shape)}"
            )
        loaded[key] = torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype)
    model.load_state_dict(loaded, strict=True)
    # the container's own flag only: model.train() would overwrite every layer's
    model.training = _bool(description.get("training", False))
    return model


def train_and_describe(train_fn: Callable, data: TrainingData, seed: int) -> dict:
    """Run ``train_fn(data, seed)`` and summarise the run as plain data (the learner's side).

    Returns:
        ``{"model": describe_model(...) or None, "refused": reason or "", "min_bn_batch",
        "seconds"}``; ``min_bn_batch`` is the fewest values per channel a batch-norm layer
        normalized over while training (observed with a forward pre-hook; None: no batch
        norm ran in training mode).
    """
    counts: list[int] = []

    def bn_hook(module, inputs):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and inputs:
            x = inputs[0]
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1]:
                counts.append(x.numel() // x.shape[1])

    handle = nn.modules.module.register_module_forward_pre_hook(bn_hook)
    start = time.perf_counter()
    try:
        model = train_fn(data, seed)
    finally:
        handle.remove()
    seconds = time.perf_counter() - start
    out: dict = {
        "model": None,
        "refused": "",
        "min_bn_batch": min(counts) if counts else None,
        "seconds": float(seconds),
    }
    try:
        out["model"] = describe_model(model)
    except ModelNotAllowed as e:
        out["refused"] = str(e)
    return out


@dataclass
class CapstoneReport:
    """What :func:`assess` found (see the module docstring); ``seconds``: training time;
    ``error``: why the run could not be measured; ``model``: the rebuilt model (or, from
    :func:`measure`, the model as returned)."""

    accuracy: float
    in_eval_mode: bool
    first_layer_input: tuple[float, float]
    min_bn_batch: int | None
    seconds: float
    error: str = ""
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def reaches_target(self) -> bool:
        return self.accuracy >= TARGET_ACCURACY

    @property
    def inputs_scaled(self) -> bool:
        mean, std = self.first_layer_input
        return (
            math.isfinite(mean)
            and abs(mean) <= INPUT_MEAN_LIMIT
            and INPUT_STD_RANGE[0] <= std <= INPUT_STD_RANGE[1]
        )

    @property
    def batch_stats_ok(self) -> bool:
        return self.min_bn_batch is None or self.min_bn_batch >= MIN_BN_VALUES


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    out = model(x)
    return float((out.argmax(1) == y).float().mean())


@torch.no_grad()
def _first_layer_input(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    seen: list[torch.Tensor] = []

    def hook(module, inputs):
        if isinstance(module, nn.Linear) and not seen:
            seen.append(inputs[0].detach().float())

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    if not seen:
        return (float("nan"), float("nan"))
    return (float(seen[0].mean()), float(seen[0].std()))


def _number(v: Any) -> float:
    return float(v) if type(v) in (int, float) and math.isfinite(v) else float("nan")


def assess(run: Mapping, held_out: MNISTSplit | None = None) -> CapstoneReport:
    """Rebuild the model a run described and measure it on held-out data (the grader's side).

    Args:
        run: :func:`train_and_describe`'s output (possibly from another process: every field
            is validated).
        held_out: data whose test split the model is measured on (default :func:`load_data`).
    """
    nan2 = (float("nan"), float("nan"))
    if not isinstance(run, Mapping):
        return CapstoneReport(0.0, False, nan2, None, float("nan"), "malformed training report")
    seconds = _number(run.get("seconds"))
    mbb = run.get("min_bn_batch")
    min_bn = mbb if type(mbb) is int and mbb >= 0 else None
    if run.get("refused") or run.get("model") is None:
        reason = run.get("refused") if isinstance(run.get("refused"), str) else ""
        return CapstoneReport(0.0, False, nan2, min_bn, seconds, reason or "no model returned")
    try:
        model = rebuild_model(run["model"])
    except ModelNotAllowed as e:
        return CapstoneReport(0.0, False, nan2, min_bn, seconds, str(e))
    in_eval = not any(m.training for m in model.modules())
    data = load_data() if held_out is None else held_out
    served = model.eval()
    try:
        acc = _accuracy(served, data.x_test, data.y_test)
        first = _first_layer_input(served, data.x_test[:500])
    except Exception as e:  # a model that cannot take raw (N, 784) pixels
        return CapstoneReport(
            0.0,
            in_eval,
            nan2,
            min_bn,
            seconds,
            error=f"the returned model failed on raw (N, 784) test pixels: {type(e).__name__}: {e}",
            model=model,
        )
    return CapstoneReport(acc, in_eval, first, min_bn, seconds, model=model)


def measure(train_fn: Callable, seed: int, data: MNISTSplit | None = None) -> CapstoneReport:
    """Train with ``train_fn(training_data(data), seed)`` and measure the run as the grader
    does (:func:`train_and_describe`, then :func:`assess`); ``report.model`` is the model as
    ``train_fn`` returned it."""
    data = load_data() if data is None else data
    returned: list[Any] = []

    def keep(d: TrainingData, s: int) -> Any:
        returned.append(train_fn(d, s))
        return returned[-1]

    # the claims audit's seed offset reaches train_fn through its seed argument (here, not in
    # train_and_describe, which the grader's sandbox runs with the grader's own seed)
    report = assess(train_and_describe(keep, training_data(data), seeding.shifted(seed)), data)
    if returned and isinstance(returned[0], nn.Module):
        report.model = returned[0]
    return report


@torch.no_grad()
def serve_one_at_a_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int = 200):
    """Predict ``limit`` test images one request at a time, with the model *as it is* (no
    ``.eval()`` call), as a server would. Returns (accuracy, error message or "")."""
    correct = 0
    for i in range(min(limit, len(x))):
        try:
            out = model(x[i : i + 1])
        except Exception as e:  # noqa: BLE001 - the point is to show the failure
            return float("nan"), f"{type(e).__name__}: {e}"
        correct += int(out.argmax(1).item() == int(y[i]))
    return correct / min(limit, len(x)), ""
