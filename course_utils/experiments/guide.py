"""The course's decision guide (lesson 09) and map of today's architectures (lesson 11).

:func:`recommend` holds the rules (testable, no widgets); :func:`chooser` wraps it in
ipywidgets dropdowns. Each recommendation names the lessons whose experiments measured the
reasons, so a learner can go back to the evidence. :data:`MAP` lists well-known architecture
families with the normalization they use; :func:`map_table` renders it as the Markdown table
of lesson 11, and every family names the :data:`ARCHITECTURES` key whose recommendation
agrees with it (the tests check that they do).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARCHITECTURES",
    "SMALL_BATCH",
    "Recommendation",
    "recommend",
    "chooser",
    "Family",
    "MAP",
    "map_table",
]

ARCHITECTURES = {
    "cnn": "CNN for image classification",
    "detection": "CNN for detection or segmentation (large images)",
    "mlp": "MLP on tabular or flattened data",
    "rnn": "RNN / recurrent sequence model",
    "transformer": "transformer (a few layers)",
    "llm": "large language model (deep decoder-only transformer)",
    "vit": "vision transformer (deep)",
    "style_transfer": "style transfer",
    "diffusion_unet": "image generation: diffusion U-Net",
    "dit": "image generation: diffusion transformer (DiT), conditional",
    "fine_tuning": "fine-tuning a pretrained CNN that has batch norm",
}

# Below this many samples per device, batch statistics get noisy enough to hurt (lessons 04
# and 07 measured the degradation; Wu & He 2018 report it below about 16 per GPU).
SMALL_BATCH = 16


@dataclass(frozen=True)
class Recommendation:
    """What to use and why.

    ``norm``: the layer to use ("BatchNorm", "GroupNorm", "LayerNorm", ...); ``placement``:
    where it goes; ``reasons``: one sentence each; ``lessons``: the lessons that measured
    the reasons (two-digit strings); ``also``: practices that go with the choice.
    """

    norm: str
    placement: str
    reasons: tuple[str, ...]
    lessons: tuple[str, ...]
    also: tuple[str, ...] = ()

    def to_text(self) -> str:
        """A plain-text summary (what the widget shows, as text)."""
        lines = [f"Use {self.norm}; {self.placement}."]
        lines += [f"- {r}" for r in self.reasons]
        lines += [f"- also: {a}" for a in self.also]
        lines.append(
            "Measured in lesson"
            + ("s " if len(self.lessons) > 1 else " ")
            + ", ".join(self.lessons)
            + "."
        )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        items = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        items += "".join(f"<li><i>also:</i> {html.escape(a)}</li>" for a in self.also)
        return (
            f"<div style='border-left:4px solid #0072B2;padding:4px 10px'><b>Use "
            f"{html.escape(self.norm)}</b>, {html.escape(self.placement)}.<ul>{items}</ul>"
            f"Measured in lesson{'s' if len(self.lessons) > 1 else ''} "
            f"{', '.join(self.lessons)}.</div>"
        )


_EVAL = "call model.eval() before evaluating or serving (BN then uses its running statistics)"


def recommend(architecture: str, batch_size: int) -> Recommendation:
    """The normalization the course recommends for an architecture and per-device batch size.

    Args:
        architecture: a key of :data:`ARCHITECTURES` ("cnn", "detection", "mlp", "rnn",
            "transformer", "llm", "vit", "style_transfer", "diffusion_unet", "dit",
            "fine_tuning").
        batch_size: samples per device in one training step (>= 1); the statistics batch norm
            sees come from this many samples (times H x W positions in a CNN).
    Returns:
        A :class:`Recommendation`.
    Raises:
        ValueError: unknown architecture or a batch size below 1.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}"
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    small = batch_size < SMALL_BATCH
    n = batch_size
    if architecture == "transformer":
        return Recommendation(
            "LayerNorm (or RMSNorm)",
            "Pre-LN: x + f(LN(x)) in every block, one LN after the last block",
            (
                "statistics of one token's features: independent of batch size and length",
                "Pre-LN trained without warm-up where Post-LN stalled; Post-LN needs warm-up",
                "RMSNorm drops the mean subtraction and the bias; its speed-up depends on the "
                "implementation",
            ),
            ("06", "08"),
            (
                "keep LN/RMSNorm weights out of weight decay",
                "deeper or trained at high learning rates: see 'llm' and 'vit' (QK-norm, "
                "LayerScale, DeepNorm)",
            ),
        )
    if architecture == "llm":
        return Recommendation(
            "RMSNorm, plus QK-norm",
            "Pre-LN (RMSNorm before every sub-layer, one after the last block); q and k "
            "normalized per head before q·k",
            (
                "Pre-LN trained without warm-up where Post-LN stalled",
                "without QK-norm the attention logits grew with the learning rate until "
                "training stalled; QK-norm bounds them and trained at a higher learning rate",
                "RMSNorm drops the mean subtraction and the bias",
            ),
            ("06", "08", "11"),
            ("keep normalization weights out of weight decay",),
        )
    if architecture == "vit":
        return Recommendation(
            "LayerNorm with LayerScale",
            "Pre-LN, each branch scaled by a learned per-channel gain that starts small: "
            "x + diag(lambda) f(LN(x))",
            (
                "per-token statistics: no batch dependence",
                "in a deeper Pre-LN stack LayerScale kept the residual stream small and, on "
                "average over seeds, reached a lower loss than Pre-LN alone",
                "QK-norm when training at high learning rates or large scale",
            ),
            ("06", "08", "11"),
        )
    if architecture == "dit":
        return Recommendation(
            "adaLN-Zero",
            "LayerNorm without affine in every block; shift, scale and a gate for the residual "
            "branch from the condition (timestep, class), the modulation initialised at zero",
            (
                "on a task that needs the condition to interact with the input, adaLN-Zero "
                "learned at once where concatenating the condition stayed at chance and FiLM "
                "without the zero gate learned slowly",
                "every block starts as the identity",
            ),
            ("11",),
        )
    if architecture == "diffusion_unet":
        return Recommendation(
            "GroupNorm, with scale and shift from the condition (adaptive GroupNorm)",
            "in every residual block: GroupNorm(32 groups), then (1 + scale(t)) * h + shift(t) "
            "from the timestep (and class) embedding",
            (
                "group norm's statistics are per sample: small batches of large images are fine",
                "the condition enters multiplicatively, which concatenation cannot do",
            ),
            ("07", "11"),
        )
    if architecture == "rnn":
        return Recommendation(
            "LayerNorm",
            "inside the recurrent cell, on the pre-activations of each time step",
            (
                "per-sample statistics work for any sequence length and at batch size 1",
                "batch norm would need separate statistics for every time step",
            ),
            ("06",),
        )
    if architecture == "style_transfer":
        return Recommendation(
            "InstanceNorm (AdaIN for any style)",
            "after each convolution, before the activation; AdaIN replaces the affine by the "
            "style image's per-channel mean and std",
            (
                "each image's channels are normalized on their own, which removes the image's "
                "contrast (per-channel mean and scale) and makes the output independent of "
                "the batch",
                "AdaIN is conditional normalization whose scale and shift come from the style",
            ),
            ("07", "11"),
            (
                "use affine=True if the network should learn a per-channel scale",
                "StyleGAN2 replaced AdaIN by weight demodulation (not measured in this course)",
            ),
        )
    if architecture == "fine_tuning":
        if small:
            return Recommendation(
                "the pretrained BatchNorm, frozen",
                "keep the BN layers in eval mode (running statistics fixed)",
                (
                    f"{n} samples per step give batch statistics too noisy to replace the "
                    "pretrained ones",
                    "put only the BN modules in eval mode after model.train(), or replace BN by "
                    "GroupNorm and train longer",
                ),
                ("05", "07"),
                (_EVAL,),
            )
        return Recommendation(
            "BatchNorm (fine-tuned)",
            "as in the pretrained network",
            (
                f"{n} samples per step are enough to update the running statistics",
                "if the new data differ, recalibrate the running statistics before evaluating",
            ),
            ("05", "09"),
            (_EVAL,),
        )
    # cnn, detection, mlp
    if small:
        per_sample = "LayerNorm" if architecture == "mlp" else "GroupNorm (e.g. 32 groups)"
        return Recommendation(
            per_sample,
            "after the convolution or linear layer, before the activation",
            (
                f"batch norm at {n} samples per device normalizes with noisy statistics, and "
                "its training and eval behaviour drift apart",
                "group and layer norm compute statistics per sample: the batch size does not "
                "matter",
            ),
            ("04", "07") if architecture == "mlp" else ("04", "07", "09", "11"),
            (
                "weight standardization pairs well with group norm in CNNs",
                "or no normalization at all: scaled weight standardization and a residual gain "
                "(NF-ResNets) did not depend on the batch either",
            )
            if architecture != "mlp"
            else (),
        )
    reasons = [
        f"{n} samples per device give stable batch statistics",
        "batch norm allowed larger learning rates",
    ]
    if architecture == "detection":
        reasons.append("with several devices, synchronise the statistics (SyncBatchNorm)")
    return Recommendation(
        "BatchNorm",
        "after the convolution or linear layer, before the activation (drop that layer's bias)",
        tuple(reasons),
        ("03", "04", "05", "08"),
        (_EVAL, "no weight decay on BN weights and biases"),
    )


@dataclass(frozen=True)
class Family:
    """One row of the map: an architecture ``family`` and ``examples`` of it, the
    normalization it uses (``norm``), ``where``, ``why`` (one phrase), the lessons that
    measured the reason (``lessons``; empty when no lesson did) and the
    :data:`ARCHITECTURES` key whose recommendation agrees (``key``, None for none) with the
    batch size ``batch`` per device."""

    family: str
    examples: str
    norm: str
    where: str
    why: str
    lessons: tuple[str, ...]
    key: str | None = None
    batch: int = 32


MAP = (
    Family(
        "CNN, image classification",
        "ResNet",
        "BatchNorm",
        "conv -> BN -> ReLU; inside pre-activation residual branches",
        "stable batch statistics allow larger learning rates",
        ("03", "04", "08"),
        "cnn",
    ),
    Family(
        "CNN, detection / segmentation",
        "Mask R-CNN",
        "GroupNorm (+ weight standardization), or frozen BatchNorm",
        "after each conv",
        "1-2 large images per device: batch statistics are too noisy",
        ("04", "07"),
        "detection",
        2,
    ),
    Family(
        "CNN without normalization",
        "NF-ResNet, NFNet",
        "none: scaled weight standardization, residual gains, AGC",
        "every conv; every residual branch",
        "no batch dependence; batch norm collapsed at 1 sample per device, this did not",
        ("09", "11"),
        "cnn",
        1,
    ),
    Family(
        "RNN",
        "LSTM language models",
        "LayerNorm",
        "inside the cell, every time step",
        "per-sample statistics for any length and batch",
        ("06",),
        "rnn",
    ),
    Family(
        "Post-LN transformer",
        "original Transformer, BERT",
        "LayerNorm (Post-LN)",
        "after each residual addition",
        "stalls without learning-rate warm-up",
        ("08",),
        None,
    ),
    Family(
        "Pre-LN transformer",
        "GPT-2, LLaMA",
        "LayerNorm or RMSNorm (Pre-LN)",
        "before each sub-layer, one after the last block",
        "trains without warm-up; RMSNorm drops the mean",
        ("06", "08"),
        "transformer",
    ),
    Family(
        "large language / vision models at high learning rates",
        "ViT-22B, OLMo 2, Gemma 3",
        "QK-norm (on top of Pre-LN)",
        "on each head's queries and keys",
        "bounds the attention logits, which otherwise grow until training stalls",
        ("11",),
        "llm",
    ),
    Family(
        "deep vision transformer",
        "CaiT, DINOv2",
        "LayerScale (on top of Pre-LN LayerNorm)",
        "a learned per-channel gain on each residual branch, starting small",
        "keeps the residual stream small; a lower loss than Pre-LN alone on average",
        ("11",),
        "vit",
    ),
    Family(
        "very deep Post-LN transformer",
        "DeepNet",
        "DeepNorm",
        "LN(alpha x + f(x)) with a down-scaled initialisation",
        "Post-LN that trains without warm-up",
        ("08", "11"),
        None,
    ),
    Family(
        "conditioned network",
        "FiLM",
        "FiLM",
        "scale and shift of features from the condition",
        "the condition acts multiplicatively",
        ("11",),
        None,
    ),
    Family(
        "style transfer",
        "AdaIN",
        "InstanceNorm / AdaIN",
        "after each conv; AdaIN takes the style's mean and std",
        "removes the content image's per-channel statistics",
        ("07",),
        "style_transfer",
    ),
    Family(
        "style-based GAN",
        "StyleGAN2",
        "weight demodulation (replaced AdaIN)",
        "inside each conv's weights",
        "AdaIN's normalization left artifacts",
        (),
        None,
    ),
    Family(
        "diffusion U-Net",
        "DDPM, ADM",
        "GroupNorm with adaptive scale and shift",
        "every residual block; scale and shift from the timestep embedding",
        "per-sample statistics; the condition acts multiplicatively",
        ("07", "11"),
        "diffusion_unet",
    ),
    Family(
        "diffusion transformer",
        "DiT",
        "adaLN-Zero",
        "every block: shift, scale and a gate from the condition, zero at start",
        "learned at once where concatenating the condition stayed at chance",
        ("11",),
        "dit",
    ),
)


def map_table() -> str:
    """:data:`MAP` as a Markdown table (lesson 11's map)."""
    rows = [
        "| family (examples) | normalization | where | why | measured in |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in MAP:
        measured = (
            ("lesson " if len(f.lessons) == 1 else "lessons ") + ", ".join(f.lessons)
            if f.lessons
            else "not measured here"
        )
        rows.append(f"| {f.family} ({f.examples}) | {f.norm} | {f.where} | {f.why} | {measured} |")
    return "\n".join(rows)


def chooser():
    """An ipywidgets form: architecture and batch size in, :func:`recommend`'s answer out.

    Returns a ``VBox(architecture dropdown, batch-size slider, HTML answer)``; the answer is
    recomputed on every change (also when the controls are set from Python).
    """
    import ipywidgets as w

    arch = w.Dropdown(
        options=[(v, k) for k, v in ARCHITECTURES.items()],
        value="cnn",
        description="architecture",
        style={"description_width": "initial"},
        layout=w.Layout(width="460px"),
    )
    batch = w.SelectionSlider(
        options=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        value=64,
        description="batch per device",
        style={"description_width": "initial"},
    )
    answer = w.HTML()

    def update(*_):
        answer.value = recommend(arch.value, batch.value)._repr_html_()

    arch.observe(update, "value")
    batch.observe(update, "value")
    update()
    return w.VBox([arch, batch, answer])
