"""Lesson 08's decision guide: which normalization for which architecture and batch size.

:func:`recommend` holds the rules (testable, no widgets); :func:`chooser` wraps it in
ipywidgets dropdowns. Each recommendation names the lessons whose experiments measured the
reasons, so a learner can go back to the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHITECTURES", "SMALL_BATCH", "Recommendation", "recommend", "chooser"]

ARCHITECTURES = {
    "cnn": "CNN for image classification",
    "detection": "CNN for detection or segmentation (large images)",
    "mlp": "MLP on tabular or flattened data",
    "rnn": "RNN / recurrent sequence model",
    "transformer": "transformer",
    "style_transfer": "feed-forward style transfer",
    "fine_tuning": "fine-tuning a pretrained CNN that has batch norm",
}

# Below this many samples per device, batch statistics get noisy enough to hurt (lessons 04
# and 06 measured the degradation; Wu & He 2018 report it below about 16 per GPU).
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
            "transformer", "style_transfer", "fine_tuning").
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
                "Pre-LN trained without warm-up where Post-LN stalled (with Adam, a short "
                "warm-up is still common)",
                "RMSNorm drops the mean subtraction and the bias; its speed-up depends on the "
                "implementation",
            ),
            ("05", "07"),
            ("keep LN/RMSNorm weights out of weight decay",),
        )
    if architecture == "rnn":
        return Recommendation(
            "LayerNorm",
            "inside the recurrent cell, on the pre-activations of each time step",
            (
                "per-sample statistics work for any sequence length and at batch size 1",
                "batch norm would need separate statistics for every time step",
            ),
            ("05",),
        )
    if architecture == "style_transfer":
        return Recommendation(
            "InstanceNorm",
            "after each convolution, before the activation",
            (
                "each image's channels are normalized on their own, which removes the image's "
                "contrast (per-channel mean and scale) and makes the output independent of "
                "the batch",
                "image generation has moved on: diffusion U-Nets use GroupNorm with a "
                "conditioned scale and shift, DiT uses adaLN-Zero, and StyleGAN2 replaced "
                "AdaIN by weight demodulation",
            ),
            ("06",),
            ("use affine=True if the network should learn a per-channel scale",),
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
                ("04", "06"),
                (_EVAL,),
            )
        return Recommendation(
            "BatchNorm (fine-tuned)",
            "as in the pretrained network",
            (
                f"{n} samples per step are enough to update the running statistics",
                "if the new data differ, recalibrate the running statistics before evaluating",
            ),
            ("04", "08"),
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
            ("04", "06"),
            ("weight standardization pairs well with group norm in CNNs",)
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
        ("03", "04", "07"),
        (_EVAL, "no weight decay on BN weights and biases"),
    )


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
