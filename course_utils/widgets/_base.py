"""What every course widget repeats: controls that can be set from Python in one go, a
figure view, clean-up, and a display that falls back to a picture.

A widget subclasses :class:`CourseWidget`, fills ``self.controls`` (name -> ipywidgets
control, in the order they must be set: a control whose choices depend on another comes
after it), ``self.view`` (a :class:`~course_utils.widgets._display.FigureView`) and
``self.widget`` (the layout to display), calls :meth:`CourseWidget.watch_controls`, and
implements :meth:`CourseWidget.apply` (redraw for the changed controls). Setting several
controls with :meth:`CourseWidget.set` redraws once; a click redraws once.

The control factories keep the look of all widgets alike and their sliders fine enough to
reach every value: a :func:`choice_slider` moves through a list of useful values (one
step per value, whatever the track's length), instead of a continuous slider that jumps
over them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import ipywidgets as W

from ._display import mimebundle

__all__ = [
    "CourseWidget",
    "ChoiceSlider",
    "choice_slider",
    "int_slider",
    "dropdown",
    "toggle",
    "row",
]

_LABEL = {"description_width": "initial"}


class CourseWidget:
    """Base of the course's widgets (see the module docstring for the contract)."""

    controls: dict[str, W.ValueWidget]
    view = None
    widget: W.Box

    def __init__(self):
        self._hold = 0
        self._closed = False

    # -- setting controls --------------------------------------------------------------------

    @contextlib.contextmanager
    def held(self):
        """Inside this block control changes do not redraw (changes made by the widget
        itself, or several at once)."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1

    def watch_controls(self) -> None:
        """Redraw when a control changes in the page (call once the controls exist)."""
        for key, control in self.controls.items():
            control.observe(lambda change, key=key: self._on_control(key), names="value")

    def _on_control(self, key: str) -> None:
        if self._hold or self._closed:
            return
        with self.held():
            self.prepare(key)
        self.apply({key})

    def set(self, **values) -> None:
        """Set several controls at once (by name) and redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(
                f"unknown controls {sorted(unknown)}; choose from {sorted(self.controls)}"
            )
        with self.held():
            for key in self.controls:  # in the controls' order: what others depend on first
                if key in values:
                    if isinstance(self.controls[key], ChoiceSlider):
                        self.controls[key].offer(values[key])
                    self.controls[key].value = values[key]
                    self.prepare(key)
        self.apply(set(values))

    def prepare(self, key: str) -> None:
        """Adjust other controls after ``key`` changed (e.g. fit a slider's range to a new
        tensor); runs with redrawing held. Default: nothing."""

    def apply(self, changed: set[str]) -> None:
        """Show the state after the controls in ``changed`` changed."""
        raise NotImplementedError

    # -- display and clean-up ----------------------------------------------------------------

    def close(self) -> None:
        """Close the widgets (the figure is not shown any more)."""
        self._closed = True
        self.view.close()
        self.widget.close()

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return mimebundle(self.widget, self.view, repr(self))


# -- control factories ----------------------------------------------------------------------


class ChoiceSlider(W.SelectionSlider):
    """A slider over a sorted list of values; :meth:`offer` adds a value set from Python
    that is not among them, so it stays exact (``lr=10**0.5``)."""

    def __init__(self, values: Sequence, value, fmt: str, **kwargs):
        self._fmt = fmt
        super().__init__(options=self._labelled(values, value), value=value, **kwargs)

    def _labelled(self, values, value) -> list[tuple[str, object]]:
        return [(self._fmt.format(v), v) for v in sorted({*values, value})]

    def offer(self, value) -> None:
        """Make ``value`` one of the choices (before setting it)."""
        values = [v for _, v in self.options]
        if value not in values:
            self.options = self._labelled(values, value)


def choice_slider(
    description: str,
    values: Sequence,
    value,
    fmt: str = "{:g}",
    width: str = "265px",
) -> ChoiceSlider:
    """A slider over ``values`` (sorted), with ``value`` added if it is not among them, so
    any value passed from Python stays exact; the readout uses ``fmt``."""
    return ChoiceSlider(
        values,
        value,
        fmt,
        description=description,
        style=_LABEL,
        layout=W.Layout(width=width),
        continuous_update=True,
    )


def int_slider(description: str, value: int, lo: int, hi: int, width: str = "265px"):
    """An integer slider from ``lo`` to ``hi``."""
    return W.IntSlider(
        value=value, min=lo, max=hi, description=description, style=_LABEL,
        layout=W.Layout(width=width),
    )  # fmt: skip


def dropdown(description: str, options, value, width: str) -> W.Dropdown:
    """A labelled dropdown."""
    return W.Dropdown(
        options=options, value=value, description=description, style=_LABEL,
        layout=W.Layout(width=width),
    )  # fmt: skip


def toggle(options, value, button_width: str, tooltips: Sequence[str] = ()) -> W.ToggleButtons:
    """A row of toggle buttons."""
    return W.ToggleButtons(
        options=options, value=value, tooltips=list(tooltips),
        style={"button_width": button_width},
    )  # fmt: skip


def row(children: Iterable[W.Widget]) -> W.HBox:
    """A row of controls that wraps onto a second line rather than overflow."""
    return W.HBox(list(children), layout=W.Layout(flex_flow="row wrap", align_items="center"))
