"""The streams of the learning-quality benchmark: River's seeded generators and bundled datasets.

Each synthetic family comes stationary, with an abrupt change (two generators concatenated at the
middle row: River's ConceptDriftStream overflows at width 1) and with a gradual one
(ConceptDriftStream centred on the middle row, a tenth of the stream wide). Real datasets are the
ones River ships inside its wheel (no download); datasets River fetches at run time are skipped.
Every stream is materialised once as arrays, so Streamfit and River see the same rows in the same
order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

KINDS = ("stationary", "abrupt", "gradual")
RARE_KEEP = 1 / 40  # `searare`: the share of SEA's positives kept (about 5 % of the rows end up positive)
# Families outside the set every choice was made on (`full_set`): a check that the choices carry over.
OTHER_FAMILIES = ("led", "waveform", "searare")


@dataclass(frozen=True)
class Stream:
    """One benchmark stream: rows, labels (class indices or targets) and where its concept changes."""

    name: str
    family: str
    kind: str  # stationary | abrupt | gradual | real
    task: str  # classification | regression
    X: np.ndarray
    y: np.ndarray
    change: int | None  # the row where the new concept starts (the centre of a gradual change)

    @property
    def features(self) -> list[str]:
        return [f"x{i}" for i in range(self.X.shape[1])]


def _arrays(pairs: Iterable[tuple[dict, object]], rows: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    taken = list(itertools.islice(pairs, rows))
    keys = list(taken[0][0])
    X = np.array([[float(x[k]) for k in keys] for x, _ in taken], dtype=np.float64)
    y = np.array([float(v) if task == "regression" else int(v) for _, v in taken])
    return X, y


def _rare_positives(source: Iterable, keep: float, seed: int) -> Iterator[tuple[dict, object]]:
    """`source` with each positive row kept with probability `keep` (seeded): a rare positive class."""
    rng = np.random.default_rng(seed + 10_000)
    for x, y in source:
        if not y or rng.random() < keep:
            yield x, int(y)


def _mixed(before: Iterable, after: Iterable, position: int, width: int, seed: int) -> Iterator[tuple[dict, object]]:
    """Row t from `after` with probability 1 / (1 + exp(-4 (t - position) / width)), else from `before`:
    River's `ConceptDriftStream` sigmoid, for sources that are generators."""
    rng = np.random.default_rng(seed)
    before, after = iter(before), iter(after)
    for t in itertools.count():
        x = -4.0 * (t - position) / width
        share_after = 1.0 / (1.0 + np.exp(x)) if x < 700 else 0.0
        yield next(after) if rng.random() < share_after else next(before)


def _generators(family: str, seed: int) -> tuple[Callable[[], Iterable], Callable[[], Iterable]]:
    """(before, after) concept generators of a synthetic classification family.

    Outside the benchmark's set (never used to choose a default; for checking that choices carry
    over): `led` (ten classes, 24 binary features, 10 % of its segments flipped; after: seven relevant
    features swapped), `waveform` (three classes, 21 noisy features; stationary only) and `searare`
    (SEA with positives kept 1 in 40: about 5 % positive; after: SEA's variant 3, as `sea`).
    """
    from river.datasets import synth

    if family == "waveform":
        return lambda: synth.Waveform(seed=seed), _no_change(family)
    if family == "searare":
        return (
            lambda: _rare_positives(synth.SEA(variant=0, seed=seed), RARE_KEEP, seed),
            lambda: _rare_positives(synth.SEA(variant=3, seed=seed + 1), RARE_KEEP, seed + 1),
        )
    return {
        "sea": (lambda: synth.SEA(variant=0, seed=seed), lambda: synth.SEA(variant=3, seed=seed + 1)),
        "hyperplane": (
            lambda: synth.Hyperplane(seed=seed, n_features=10),
            lambda: synth.Hyperplane(seed=seed + 100, n_features=10),
        ),
        "agrawal": (
            lambda: synth.Agrawal(classification_function=0, seed=seed),
            lambda: synth.Agrawal(classification_function=2, seed=seed + 1),
        ),
        "stagger": (
            lambda: synth.STAGGER(classification_function=0, seed=seed),
            lambda: synth.STAGGER(classification_function=2, seed=seed + 1),
        ),
        "rbf": (
            lambda: synth.RandomRBF(seed_model=seed, seed_sample=seed, n_features=10, n_centroids=20),
            lambda: synth.RandomRBF(seed_model=seed + 100, seed_sample=seed + 1, n_features=10, n_centroids=20),
        ),
        "led": (
            lambda: synth.LED(seed=seed, noise_percentage=0.1, irrelevant_features=True),
            lambda: synth.LEDDrift(seed=seed + 1, noise_percentage=0.1, irrelevant_features=True, n_drift_features=7),
        ),
    }[family]


def _no_change(family: str) -> Callable[[], Iterable]:
    def refuse() -> Iterable:
        raise ValueError(f"{family} has no second concept: use {family}_stationary_s<seed>")

    return refuse


def synthetic(family: str, kind: str, seed: int, rows: int) -> Stream:
    """A seeded classification stream of `family` (sea, hyperplane, agrawal, stagger, rbf; led, waveform,
    searare outside the benchmark's set)."""
    from river.datasets import synth

    before, after = _generators(family, seed)
    change = rows // 2
    if kind == "stationary":
        pairs, change_at = iter(before()), None
    elif kind == "abrupt":
        pairs, change_at = itertools.chain(itertools.islice(before(), change), after()), change
    elif kind == "gradual" and family == "searare":  # River's ConceptDriftStream takes datasets, not generators
        pairs, change_at = _mixed(before(), after(), change, max(2, rows // 10), seed), change
    elif kind == "gradual":
        drift = synth.ConceptDriftStream(before(), after(), position=change, width=max(2, rows // 10), seed=seed)
        pairs, change_at = iter(drift), change
    else:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    X, y = _arrays(pairs, rows, "classification")
    return Stream(f"{family}_{kind}_s{seed}", family, kind, "classification", X, y, change_at)


def friedman(kind: str, seed: int, rows: int) -> Stream:
    """River's Friedman regression: stationary, global abrupt ('gra') or global gradual ('gsg') change."""
    from river.datasets import synth

    change = rows // 2
    if kind == "stationary":
        source, change_at = synth.Friedman(seed=seed), None
    elif kind == "abrupt":  # gra changes at both positions; the second lies past the stream's end
        source, change_at = synth.FriedmanDrift(drift_type="gra", position=(change, rows * 10), seed=seed), change
    elif kind == "gradual":
        width = max(2, rows // 10)
        source = synth.FriedmanDrift(
            drift_type="gsg", position=(change - width // 2, rows * 10), transition_window=width, seed=seed
        )
        change_at = change
    else:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    X, y = _arrays(iter(source), rows, "regression")
    return Stream(f"friedman_{kind}_s{seed}", "friedman", kind, "regression", X, y, change_at)


# River's datasets that its wheel ships (binary classification or regression): no network needed.
REAL = {"phishing": ("Phishing", "classification"), "bananas": ("Bananas", "classification")}
# Fetched from the internet at first use: not run here (this machine reaches package registries only).
REMOTE = ("Elec2", "CreditCard", "Higgs")


def real(name: str, rows: int | None = None) -> Stream:
    """A dataset River ships, in its own order (at most `rows` rows)."""
    from river import datasets

    cls, task = REAL[name]
    data = getattr(datasets, cls)()
    X, y = _arrays(iter(data), rows or data.n_samples, task)
    return Stream(name, name, "real", task, X, y, None)


def build(name: str, rows: int) -> Stream:
    """A stream from its name: `<family>_<kind>_s<seed>`, `friedman_<kind>_s<seed>` or a real dataset."""
    if name in REAL:
        return real(name, rows if rows < 5_000 else None)
    family, kind, seed = name.rsplit("_", 2)
    if not seed.startswith("s") or kind not in KINDS:
        raise ValueError(f"unknown stream {name!r}: use <family>_<{'|'.join(KINDS)}>_s<seed> or one of {sorted(REAL)}")
    if family == "friedman":
        return friedman(kind, int(seed[1:]), rows)
    return synthetic(family, kind, int(seed[1:]), rows)


def full_set(seeds: tuple[int, ...] = (1, 2)) -> list[str]:
    """Every family x kind x seed, the Friedman regression, and the shipped real datasets."""
    names = [f"{f}_{k}_s{s}" for f in ("sea", "agrawal", "stagger", "rbf") for k in KINDS for s in seeds]
    names += [f"hyperplane_stationary_s{s}" for s in seeds]
    names += [f"friedman_{k}_s{s}" for k in KINDS for s in seeds]
    return names + sorted(REAL)


QUICK = ("hyperplane_stationary_s1", "agrawal_abrupt_s1", "friedman_stationary_s1", "phishing")
