"""A trained population: its members, its recipe, how far apart the members stayed."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from workbench.checkpoints import save_checkpoint
from workbench.figures import color_for, figure_for, marker_for, paper_style


@dataclass(frozen=True)
class Population:
    """The members of :func:`~workbench.train_population` and how they were made.

    ``recipe``: everything that determined them (architecture and its arguments, ``n``,
    ``method`` and its options, ``seed``, epochs, the training arguments); ``seeds``: each
    member's seed (its initialization and data order; spawned members share the trunk's
    initialization); ``spread``: after each epoch, the mean distance between two
    members' parameters relative to a member's length (:func:`.loop.spread`);
    ``seconds``: the wall time of training them all. Use the members as any models
    (``wb.lmc_curve``, ``wb.pairwise_curves``, ``wb.merge_many``, ``wb.ensemble``).
    """

    method: str
    members: list[nn.Module]
    seeds: list[int]
    recipe: dict[str, Any] = field(default_factory=dict)
    spread: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        """One row per epoch: ``method``, ``epoch`` (from 1) and the members' ``spread``."""
        return pd.DataFrame(
            {
                "method": self.method,
                "epoch": range(1, len(self.spread) + 1),
                "spread": self.spread,
            }
        )

    def plot(self, ax: Axes | None = None) -> Figure:
        """The members' spread against the epoch: how a recipe keeps them together."""
        fig, ax = figure_for(ax)
        frame = self.to_frame()
        with paper_style():
            ax.plot(
                frame["epoch"],
                frame["spread"],
                color=color_for(self.method),
                marker=marker_for(self.method),
                label=self.method,
            )
            ax.set_xlabel("Epoch")
            ax.set_ylabel("Distance between members (relative)")
            ax.set_ylim(bottom=0)
            ax.legend(loc="best")
        return fig

    def metadata(self, member: int) -> dict[str, Any]:
        """The checkpoint metadata of member ``member``: its ``seed`` and the
        ``population`` recipe with its place in it (``member``, all ``seeds``)."""
        if not 0 <= member < len(self.members):
            raise IndexError(f"member must lie in 0..{len(self.members) - 1}, got {member}.")
        record = {**copy.deepcopy(self.recipe), "member": member, "seeds": list(self.seeds)}
        return {"seed": self.seeds[member], "population": record}

    def write_checkpoints(
        self, folder: str | Path, *, overwrite: bool = False, **metadata: Any
    ) -> list[Path]:
        """Save every member as a normal checkpoint (:func:`~workbench.save_checkpoint`)
        in ``folder``, named ``<architecture>_<method>_seed<seed>_member<i>.safetensors``,
        its metadata recording the population recipe (:meth:`metadata`) and the dataset
        when the training data named one; ``metadata`` adds to it."""
        folder = Path(folder)
        dataset = self.recipe.get("dataset")
        extra = {"dataset": dataset} if dataset else {}
        paths = []
        for i, member in enumerate(self.members):
            stem = f"{self.recipe.get('architecture', 'model')}_{self.method}"
            path = folder / f"{stem}_seed{self.recipe.get('seed', 0)}_member{i}.safetensors"
            document = {**extra, **self.metadata(i), **metadata}
            paths.append(save_checkpoint(member, path, overwrite=overwrite, **document))
        return paths
