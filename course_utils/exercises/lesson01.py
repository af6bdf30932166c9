"""Lesson 01 (input scaling): a Standardizer, a MinMaxScaler and a which-scaler question."""

from __future__ import annotations

import copy

import numpy as np

from .core import Case, Exercise, answer
from .mistakes import normalization_mistake
from .registry import register

_VALID = ("standard", "minmax", "robust")


def _scaling():
    from ..experiments import scaling

    return scaling


# ------------------------------------------------------------------------------------------
# cases and drivers shared by the two scaler exercises
# ------------------------------------------------------------------------------------------


def _scaler_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [(6, 2, None), (40, 3, 1), (5, 1, None), (12, 4, 0)]
    else:
        specs = []
        for _ in range(5):
            d = int(rng.integers(1, 9))
            const = int(rng.integers(0, d)) if rng.random() < 0.6 else None
            specs.append((int(rng.integers(3, 80)), d, const))
    cases = []
    for n, d, const in specs:
        scale = rng.uniform(0.01, 500.0, size=d)
        shift = rng.uniform(-1000.0, 1000.0, size=d)
        x_train = rng.normal(size=(n, d)) * scale + shift
        x_test = rng.normal(size=(max(2, n // 2), d)) * scale * 1.5 + shift + scale
        if const is not None:
            value = float(rng.integers(-20, 21))  # an integer: its mean is exact
            x_train[:, const] = value
            x_test[:, const] = value + float(rng.integers(-3, 4))
        z = rng.normal(size=(3, d))
        label = f"X_train of shape ({n}, {d})" + (
            f", column {const} constant" if const is not None else ""
        )
        cases.append(Case(args=(x_train, x_test, z), label=label, meta={"const": const}))
    return cases


def _run_scaler(cls, case: Case) -> dict:
    x_train, x_test, z = copy.deepcopy(case.args)
    untouched = x_train.copy()
    scaler = cls()
    returned = scaler.fit(x_train)
    out = {
        "transform(X_train)": np.asarray(scaler.transform(x_train), dtype=np.float64),
        "transform(X_test)": np.asarray(scaler.transform(x_test), dtype=np.float64),
        "inverse_transform(Z)": np.asarray(scaler.inverse_transform(z), dtype=np.float64),
        "fit returns self": returned is scaler,
        "fit leaves X unchanged": bool(np.array_equal(untouched, x_train)),
    }
    return out


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))


def _diagnose_scaler(kind: str):
    def diagnose(got, expected, case: Case) -> str | None:
        if not isinstance(got, dict):
            return None
        x_train, x_test, _ = case.args
        tr, te = got.get("transform(X_train)"), got.get("transform(X_test)")
        if tr is None or te is None:
            return None
        const = case.meta.get("const")
        if const is not None and not np.all(np.isfinite(np.asarray(tr)[:, const])):
            what = "standard deviation" if kind == "standard" else "range (max - min)"
            return (
                f"column {const} is constant and gives NaN or inf: its {what} is 0. "
                f"Use 1 instead of 0 for such features, so they map to 0."
            )
        if _close(tr, expected["transform(X_train)"]) and not _close(
            te, expected["transform(X_test)"]
        ):
            refit = _scaling().SCALERS[kind]().fit(x_test).transform(x_test)
            if _close(te, refit):
                return (
                    "transform(X_test) uses statistics computed from X_test itself. "
                    "transform must use the statistics learned by fit on the training "
                    "data (fitting on test data leaks it)."
                )
        if kind == "standard" and len(x_train) > 1:
            n = len(x_train)
            ddof1 = np.asarray(expected["transform(X_train)"]) * np.sqrt((n - 1) / n)
            if _close(tr, ddof1) and not _close(tr, expected["transform(X_train)"]):
                return (
                    "your standard deviation is the sample one (ddof=1); use the "
                    "population standard deviation, np.std's default (ddof=0)."
                )
            if case.meta.get("const") is None:  # the wrong axis, or a variance for a std
                msg = normalization_mistake(tr, x_train, (0,), 0.0)
                if msg:
                    return f"transform(X_train): {msg}"
        if _close(tr, expected["transform(X_train)"]) and _close(te, expected["transform(X_test)"]):
            inv = got.get("inverse_transform(Z)")
            if inv is not None and not _close(inv, expected["inverse_transform(Z)"]):
                return (
                    "transform is right but inverse_transform does not undo it: "
                    "solve z = (x - a) / b for x."
                )
        if got.get("fit returns self") is not True:
            return "fit must end with `return self`, so Scaler().fit(X).transform(X) works."
        if got.get("fit leaves X unchanged") is not True:
            return (
                "fit changed the array it was given; compute the statistics without "
                "modifying X in place."
            )
        return None

    return diagnose


register(
    Exercise(
        id="01.Standardizer",
        name="Standardizer",
        points=2,
        title="A per-feature standardizer with fit / transform / inverse_transform",
        reference=answer("01", "Standardizer"),
        cases=_scaler_cases,
        run=_run_scaler,
        diagnose=_diagnose_scaler("standard"),
        hints=(
            "fit learns one mean and one spread per feature (column) from the training "
            "data and keeps them on the object; transform only applies them. What must "
            "fit give back so that Standardizer().fit(X).transform(X) works?",
            "In fit: X.mean(axis=0) and the population std X.std(axis=0) (ddof=0), "
            "both shape (D,), stored as self.mean_ and self.scale_; return self. A "
            "constant column has std 0: np.where(std > 0, std, 1.0) keeps it from "
            "dividing by zero, and the column maps to 0.",
            "transform uses the stored statistics, never the ones of the data it is "
            "given: (X - self.mean_) / self.scale_; inverse_transform is Z * "
            "self.scale_ + self.mean_.",
        ),
    ),
    Exercise(
        id="01.MinMaxScaler",
        name="MinMaxScaler",
        points=2,
        title="A per-feature min-max scaler to [0, 1] with fit / transform / inverse_transform",
        reference=answer("01", "MinMaxScaler"),
        cases=_scaler_cases,
        run=_run_scaler,
        diagnose=_diagnose_scaler("minmax"),
        hints=(
            "fit learns each feature's smallest value and its range from the training "
            "data; transform maps the training minimum to 0 and the maximum to 1. What "
            "should happen to a feature whose range is 0?",
            "In fit, store self.min_ = X.min(axis=0) and the range X.max(axis=0) - "
            "self.min_ (both shape (D,)), with 1 where the range is 0; return self.",
            "transform is (X - self.min_) / self.range_; test data may fall outside "
            "[0, 1], which is correct. inverse_transform is Z * self.range_ + "
            "self.min_.",
        ),
    ),
)


# ------------------------------------------------------------------------------------------
# which scaler?
# ------------------------------------------------------------------------------------------


def _feature(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    loc, scale = rng.uniform(-100.0, 100.0), rng.uniform(0.1, 50.0)
    if kind == "gaussian":
        return rng.normal(loc, scale, size=n)
    if kind == "uniform":
        return rng.uniform(loc, loc + 4 * scale, size=n)
    if kind == "pixels":
        return rng.integers(0, 256, size=n).astype(np.float64)
    # bimodal: two clusters, far from Gaussian, no outliers
    centres = np.where(rng.random(n) < 0.5, loc - 2 * scale, loc + 2 * scale)
    return centres + rng.normal(0.0, 0.5 * scale, size=n)


def _with_outliers(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    x = x.copy()
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    k = max(1, int(round(rng.uniform(0.005, 0.05) * len(x))))
    idx = rng.choice(len(x), size=k, replace=False)
    sign = rng.choice([-1.0, 1.0]) if rng.random() < 0.3 else 1.0
    x[idx] = q50 + sign * rng.uniform(30.0, 1000.0, size=k) * (q75 - q25)
    return x


def _choice_cases(rng: np.random.Generator, hidden: bool) -> list[Case]:
    if not hidden:
        specs = [
            ("gaussian", 200, False, False),
            ("gaussian", 200, True, False),
            ("pixels", 500, False, True),
            ("bimodal", 300, False, False),
            ("uniform", 100, True, True),
            ("gaussian", 150, False, True),
        ]
    else:
        kinds = ("gaussian", "uniform", "pixels", "bimodal")
        specs = [
            (
                str(rng.choice(kinds)),
                int(rng.integers(50, 1000)),
                bool(rng.random() < 0.4),
                bool(rng.random() < 0.4),
            )
            for _ in range(8)
        ]
    cases = []
    for kind, n, outliers, bounded in specs:
        x = _feature(rng, kind, n)
        outliers = outliers and kind != "pixels"  # 8-bit pixels cannot leave 0-255
        if outliers:
            x = _with_outliers(rng, x)
        label = (
            f"{kind} feature, N={n}{', with outliers' if outliers else ''}, bounded_range={bounded}"
        )
        cases.append(
            Case(
                args=(x,),
                kwargs={"bounded_range": bounded},
                label=label,
                meta={"outliers": outliers},
            )
        )
    return cases


def _diagnose_choice(got, expected, case: Case) -> str | None:
    if not isinstance(got, str):
        return None
    answer = got.strip().lower()
    if answer not in _VALID:
        return f"answer with one of {', '.join(repr(v) for v in _VALID)}; got {got!r}"
    if answer == expected:
        return None
    if case.meta["outliers"]:
        return (
            "this feature has values far from the rest (more than 10 interquartile "
            "ranges from the median): they would dominate its std and its range"
        )
    if answer == "robust":
        return (
            "this feature has no outliers (no value is more than 10 interquartile ranges "
            "from the median), so the robust scaler is not needed"
        )
    if case.kwargs.get("bounded_range"):
        return "the model needs values in a fixed range, and there are no outliers"
    return "no fixed range is required and there are no outliers: the default applies"


register(
    Exercise(
        id="01.choose_scaler",
        name="choose_scaler",
        points=1,
        title="Recommend 'standard', 'minmax' or 'robust' scaling for one feature's values",
        reference=answer("01", "choose_scaler"),
        cases=_choice_cases,
        diagnose=_diagnose_choice,
        hints=(
            "Turn the table above into three questions, asked in order: does the "
            "feature have outliers? Does the model need a bounded range? Otherwise?",
            "An outlier lies more than 10 interquartile ranges from the median: q25, "
            "q50, q75 = np.percentile(x, [25, 50, 75]), and any value with |x - q50| > "
            "10 * (q75 - q25) means 'robust' (outliers take precedence).",
            "No outliers and bounded_range=True: 'minmax'. Everything else, "
            "Gaussian-looking or not: 'standard'.",
        ),
    ),
)
