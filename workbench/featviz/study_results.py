"""What merged neurons detect, measured: per-unit measures of a merged model against its
parents, one row per unit, and their per-layer summaries.

For each unit of a layer of the merged model and the unit of each parent it stems from
(:mod:`~workbench.featviz.study_merge` says how that unit is found):

* ``corr_<parent>``: the Pearson correlation of the merged unit's activations with the
  parent unit's (every position of every image one observation, as alignment measures
  it); ``corr_parents``: the parents' units with each other (A with matched B);
* ``cross_<parent>``: **cross-activation** of the feature visualizations, the mean of how
  strongly the merged unit responds to the parent unit's optimized image and the parent
  unit to the merged unit's, each relative to its response to its own image, above its
  mean over the data (1: as to its own image; 0: as to an average image;
  :func:`~workbench.featviz.study_measures.cross_activation`); ``cross_parents``: A and
  B's images crossed. A similarity of visualizations that needs no image metric;
* ``overlap_<parent>``: the share of the merged unit's top-``k`` images (exemplar score,
  the maximum over positions) that are also the parent unit's;
* ``std_ratio``: **variance collapse** (Jordan et al., REPAIR, 2023): the merged unit's
  standard deviation over the parents' mean one, after the BatchNorm handling, and
  ``std_ratio_before_bn`` before it (NaN where the parents' units never vary);
* ``quality_<model>``: each render's objective on the data's scale, 1 = as strong as the
  unit's best data image (the largest per-image mean activation), 0 = an average one;
  ``converged_<model>``: quality at least ``converged_quality`` (default 1: an optimized
  image that excites its unit less than a training image has not reached its optimum);
* ``label``: ``"A"``/``"B"`` (inherits that parent only), ``"both"``, ``"neither"`` (for N
  parents: the parent's name, ``"several"``, ``"all"``): the merged unit inherits a
  parent when ``corr >= correlation_threshold`` and ``cross >= cross_threshold`` (where
  the cross-activation is defined). The
  default 0.75 lies above 1/sqrt(2) = 0.71, the correlation of the average of two
  uncorrelated units of equal variance with each of them: a unit that merely blends
  two unrelated features does not pass; the cross threshold 0.5 asks that the units
  respond to each other's image at least half as strongly as to their own.

Every measure of one study is read at one observation point
(:mod:`~workbench.featviz.points`: ``"output"``, ``"norm"``, ``"relu"``), printed on every
figure. The merged model's measures are those of the study's merged model (after ``bn``);
the grid also shows the merged model before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["LABELS", "UnitStudy", "label_units", "pack_studies", "summarize", "unpack_studies"]

LABELS = ("both", "A", "B", "neither")
"""The labels of a pair study, in the order figures stack them."""


@dataclass(frozen=True)
class UnitStudy:
    """The per-unit measures of one layer of a merged model against its parents (see the
    module docstring). Tensors are indexed ``[variant, parent, unit]`` (``variants``: the
    merged model before and after its BatchNorm handling, the last one the study's),
    ``[parent, unit]`` or ``[unit]``; ``matched[p, u]`` is parent ``p``'s unit for merged
    unit ``units[u]``, exact (the method's own correspondence) where ``exact[p]``, else
    the parent's best-correlated unit. ``images`` maps parents and variants to their
    renders (empty without rendering; then ``cross`` and ``quality`` are empty too)."""

    layer: str
    point: str
    method: str
    bn: str
    alpha: float | None
    parents: tuple[str, ...]
    variants: tuple[str, ...]
    units: torch.Tensor
    matched: torch.Tensor
    exact: tuple[bool, ...]
    corr_parents: torch.Tensor
    correlation: torch.Tensor
    std_ratio: torch.Tensor
    overlap: torch.Tensor
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    k: int
    cross: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    cross_parents: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    quality: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    converged_quality: float = 1.0
    images: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rendered(self) -> bool:
        return bool(self.images)

    @property
    def names(self) -> tuple[str, ...]:
        """The parents then the variants: the rows of :attr:`quality`."""
        return (*self.parents, *self.variants)

    def converged(self) -> torch.Tensor:
        """Per model (parents then variants) and unit: did its render converge?"""
        return self.quality >= self.converged_quality

    def to_frame(self) -> pd.DataFrame:
        """One row per merged unit: its parents' units, every measure, its label."""
        frame = pd.DataFrame({"layer": self.layer, "unit": self.units.numpy()})
        frame["point"], frame["method"], frame["bn"] = self.point, self.method, self.bn
        frame["alpha"] = np.nan if self.alpha is None else self.alpha
        for p, parent in enumerate(self.parents):
            frame[f"unit_{parent}"] = self.matched[p].numpy()
        frame["corr_parents"] = self.corr_parents.numpy()
        if self.rendered:
            frame["cross_parents"] = self.cross_parents.numpy()
        last = len(self.variants) - 1
        for v in range(len(self.variants)):
            suffix = "" if v == last else "_before_bn"
            for p, parent in enumerate(self.parents):
                frame[f"corr_{parent}{suffix}"] = self.correlation[v, p].numpy()
                if self.rendered:
                    frame[f"cross_{parent}{suffix}"] = self.cross[v, p].numpy()
                frame[f"overlap_{parent}{suffix}"] = self.overlap[v, p].numpy()
            frame[f"std_ratio{suffix}"] = self.std_ratio[v].numpy()
        if self.rendered:
            for name, quality, done in zip(self.names, self.quality, self.converged(), strict=True):
                column = _column(name)
                frame[f"quality_{column}"] = quality.numpy()
                frame[f"converged_{column}"] = done.numpy()
        frame["label"] = list(self.labels)
        return frame

    def summary(self) -> pd.DataFrame:
        """One row: the layer's mean and standard deviation over units of every measure,
        and the fraction of units with each label."""
        return summarize(self.to_frame(), self.parents)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The merged units' correlation with A against with B (the first two parents)."""
        from workbench.featviz.study_plots import plot_inheritance

        return plot_inheritance(self, ax=ax)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The study as tensors and JSON-ready settings (the result cache's format):
        :meth:`from_state` gives it back, equal field for field."""
        tensors = {name: getattr(self, name) for name in _TENSORS}
        tensors |= {f"images/{name}": image for name, image in self.images.items()}
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSORS}
        meta["images"] = list(self.images)
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> UnitStudy:
        """The study that :meth:`state` wrote (``KeyError`` for a part that is missing)."""
        given = {name: tensors[name] for name in _TENSORS}
        given["images"] = {name: tensors[f"images/{name}"] for name in meta["images"]}
        for name in ("parents", "variants", "exact", "labels"):
            given[name] = tuple(meta[name])
        for name in ("layer", "point", "method", "bn", "alpha", "thresholds", "k"):
            given[name] = meta[name]
        return cls(**given, converged_quality=meta["converged_quality"])


_TENSORS = (
    "units", "matched", "corr_parents", "correlation", "std_ratio", "overlap", "cross",
    "cross_parents", "quality",
)  # fmt: skip


def pack_studies(
    found: Sequence[Mapping[str, UnitStudy]],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Studies by point of the path (alpha), then by layer, as one cache entry's tensors
    (``"<point>/<layer>/<name>"``) and settings; :func:`unpack_studies` reads them."""
    tensors: dict[str, torch.Tensor] = {}
    meta: list[list[tuple[str, dict[str, Any]]]] = []  # lists: the layers' order is kept
    for i, studies in enumerate(found):
        meta.append([])
        for layer, study in studies.items():
            parts, settings = study.state()
            meta[i].append((layer, settings))
            tensors |= {f"{i}/{layer}/{name}": t for name, t in parts.items()}
    return tensors, {"studies": meta}


def unpack_studies(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> list[dict[str, UnitStudy]]:
    """The studies that :func:`pack_studies` wrote, in their order."""
    found = []
    for i, studies in enumerate(meta["studies"]):
        found.append({})
        for layer, settings in studies:
            prefix = f"{i}/{layer}/"
            parts = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
            found[i][layer] = UnitStudy.from_state(parts, settings)
    return found


def _column(name: str) -> str:
    """A model's name as a column suffix: ``"merged + RESET"`` -> ``"merged_RESET"``."""
    return name.replace(" + ", "_").replace(" ", "_")


def label_units(
    correlation: torch.Tensor,
    cross: torch.Tensor | None,
    parents: tuple[str, ...],
    correlation_threshold: float,
    cross_threshold: float,
) -> tuple[str, ...]:
    """Each merged unit's label from its (parent, unit) correlations and cross-activations
    (see the module docstring). A NaN cross-activation (a render that does not excite its
    own unit above its mean: nothing to compare) does not vote; the correlation decides."""
    inherits = correlation >= correlation_threshold
    if cross is not None and cross.numel():
        inherits &= (cross >= cross_threshold) | cross.isnan()
    labels = []
    for column in inherits.T.tolist():
        count = sum(column)
        if count == 0:
            labels.append("neither")
        elif count == 1:
            labels.append(parents[column.index(True)])
        elif count == len(parents):
            labels.append("both" if len(parents) == 2 else "all")
        else:
            labels.append("several")
    return tuple(labels)


_FIXED = ("layer", "unit", "point", "method", "bn", "alpha", "label")


def summarize(frame: pd.DataFrame, parents: tuple[str, ...]) -> pd.DataFrame:
    """Per layer (and alpha, method, bn, point): the mean and standard deviation over
    units of every numeric measure of ``frame`` (``<measure>`` and ``<measure>_std``),
    the number of units, and the fraction with each label (``frac_<label>``)."""
    keys = [c for c in ("layer", "point", "method", "bn", "alpha") if c in frame]
    measures = [
        c
        for c in frame.columns
        if c not in _FIXED and not c.startswith("unit_") and frame[c].dtype != object
    ]
    labels = ("both", *parents) if len(parents) == 2 else (*parents, "several", "all")
    rows = []
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        row["units"] = len(part)
        for column in measures:
            values = part[column].astype(float)
            row[column] = values.mean()
            row[f"{column}_std"] = values.std(ddof=0)
        for label in (*labels, "neither"):
            row[f"frac_{label}"] = float((part["label"] == label).mean())
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class LayerStudy:
    """The unit studies of several layers of one merge (one method, BatchNorm handling,
    observation point and alpha), by layer in graph order."""

    studies: dict[str, UnitStudy]

    @property
    def first(self) -> UnitStudy:
        return next(iter(self.studies.values()))

    @property
    def layers(self) -> list[str]:
        return list(self.studies)

    def to_frame(self) -> pd.DataFrame:
        """Every unit of every layer, one row each (:meth:`UnitStudy.to_frame`)."""
        return pd.concat([s.to_frame() for s in self.studies.values()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """One row per layer: mean and spread over its units, label fractions."""
        return summarize(self.to_frame(), self.first.parents)

    def plot(self, units: int = 3) -> Figure:
        """The grid of renders: ``units`` units per layer (the best-matched first)."""
        from workbench.featviz.study_plots import plot_unit_grid

        return plot_unit_grid(self, units=units)


@dataclass(frozen=True)
class PathStudy:
    """One layer studied at several points ``alpha`` of the path from A to aligned B."""

    studies: tuple[UnitStudy, ...]

    @property
    def alphas(self) -> list[float]:
        return [s.alpha for s in self.studies]

    def to_frame(self) -> pd.DataFrame:
        """Every unit at every alpha, one row each."""
        return pd.concat([s.to_frame() for s in self.studies], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """One row per alpha: mean and spread over units, label fractions."""
        return summarize(self.to_frame(), self.studies[0].parents)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The mean correlation and cross-activation with each parent against alpha."""
        from workbench.featviz.study_plots import plot_path

        return plot_path(self, ax=ax)
