"""What an action kind is: one per-layer (or per-unit) decision, as data and a few hooks.

A kind brings everything about one action, so that adding one is one module plus one line in
:mod:`autocomp.kinds`:

- its range in a search space (``parse``/``to_spec``) and the values each slot may take;
- its slot in the decision state: one value per unit (group of coupled channels) or per layer;
- what the environment observes of a taken value (``observe``, in [0, 1]);
- how a plan stores it (``key``, ``entries``/``array``), and how a state value becomes a plan value;
- its cost terms (``shape``, writing into a :class:`Geometry`);
- the op that applies it to a model (``make_op``), and its report panel (``panel``).

Arrays: a *state* array holds the decision values (for ``rank``: ratios of the full rank), a
*plan* array what a plan stores (for ``rank``: absolute ranks, 0 = whole); both have one entry
per slot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from torch import nn

if TYPE_CHECKING:
    from autocomp.cost import CostModel
    from autocomp.graph import LayerGraph

Panel = tuple[str, list[str], list[float], "tuple[float, float] | None"]
Op = Callable[[nn.Module, Mapping[str, int]], nn.Module]
"""Applies one kind's plan entries to a model (in place) and returns it."""


@dataclass
class Geometry:
    """What a plan makes of every layer; the cost model and the latency table read only this.

    Per layer: ``out_f``/``in_f`` features after pruning, ``fan_in`` weights per output channel,
    ``first``/``second`` weights of the layer's one or two tensors (``second`` is 0 unless the
    layer is factorised), ``rows_first``/``rows_second`` their output channels, ``rank`` (0 =
    whole), ``weight_bytes`` what the tensors store, ``int8`` whether it runs as an int8 kernel.
    Per module with per-channel parameters (batch norm, ...): ``kept_fraction``. Per attention
    block: ``heads`` kept and ``head_dim``, the width of each.
    """

    out_f: np.ndarray
    in_f: np.ndarray
    kept_fraction: np.ndarray
    fan_in: np.ndarray | None = None
    first: np.ndarray | None = None
    second: np.ndarray | None = None
    rows_first: np.ndarray | None = None
    rows_second: np.ndarray | None = None
    rank: np.ndarray | None = None
    weight_bytes: np.ndarray | None = None
    heads: np.ndarray | None = None  # per attention block: heads kept
    head_dim: np.ndarray | None = None  # per attention block: width of each head kept
    int8: np.ndarray | None = None  # per layer: runs as an int8 kernel in the runtime


class ActionKind(ABC):
    """One kind of decision. Subclasses set the class attributes and implement the hooks."""

    action: ClassVar[str]  # its name in search spaces, e.g. "keep_ratio"
    key: ClassVar[str]  # its name in plans, e.g. "keep"
    scope: ClassVar[Literal["unit", "layer", "attention"]]
    stage: ClassVar[int]  # 0 changes channels, 1 changes weight tensors, 2 changes storage (op order too)
    dtype: ClassVar[type] = np.int64
    amc_feature: ClassVar[bool] = False  # its previous value is AMC's observation feature 9
    plural: ClassVar[str] = ""  # what the report calls it
    categorical: ClassVar[bool] = False  # a trial parameter of a few named values, not a range

    # ---- the search space --------------------------------------------------------------
    @abstractmethod
    def parse(self, spec: Mapping[str, Any]) -> Any:
        """The range object of a YAML spec (raises ConfigError naming the fix)."""

    @abstractmethod
    def to_spec(self, value: Any) -> dict[str, Any]:
        """The YAML spec of a range object."""

    @abstractmethod
    def choices(self, value: Any | None, cost: CostModel, index: int) -> np.ndarray:
        """Allowed state values of slot ``index`` (ascending) under range ``value``; one value
        (leaving the slot uncompressed) when the action does not apply there (``None``)."""

    @abstractmethod
    def uniform_threshold(self, level: float, space_value: Any | None, cost: CostModel, index: int) -> float:
        """The state value a uniform setting at ``level`` in [0, 1] asks of slot ``index``."""

    def observe(self, value: float, cost: CostModel, index: int) -> float:
        """A taken state value as the environment observes it, in [0, 1]."""
        return float(value)

    # ---- plans -------------------------------------------------------------------------
    @abstractmethod
    def plan_default(self, cost: CostModel) -> np.ndarray:
        """The plan array of an uncompressed model."""

    def slot_names(self, graph: LayerGraph) -> list[str]:
        return [u.name for u in graph.units] if self.scope == "unit" else [layer.name for layer in graph.layers]

    def slot_layers(self, graph: LayerGraph) -> list[int | None]:
        """Per slot, the index of the layer whose step decides it (``None``: no step does), and
        whose space rules give its range: a unit's first layer, or the layer itself."""
        if self.scope == "layer":
            return list(range(len(graph.layers)))
        index = {layer.name: i for i, layer in enumerate(graph.layers)}
        return [index[u.layers[0]] if u.layers else None for u in graph.units]

    def plan_array(self, state: np.ndarray, done: Mapping[str, np.ndarray], cost: CostModel) -> np.ndarray:
        """The plan array of a state array; ``done`` holds the plan arrays of earlier stages."""
        return np.asarray(state)

    def state_value(self, plan: np.ndarray, done: Mapping[str, np.ndarray], cost: CostModel, index: int) -> float:
        """The state value that reproduces plan value ``plan[index]`` (inverse of ``plan_array``)."""
        return float(plan[index])

    def entries(self, plan: np.ndarray, cost: CostModel) -> dict[str, int]:
        """What a plan stores: slot name -> value, leaving out slots at their default."""
        default = self.plan_default(cost)
        names = self.slot_names(cost.graph)
        return {n: int(v) for n, v, d in zip(names, plan, default) if v != d}

    def array(self, entries: Mapping[str, int], cost: CostModel) -> np.ndarray:
        """The plan array of a plan's entries (slots absent from it at their default)."""
        out = self.plan_default(cost).copy()
        index = {n: i for i, n in enumerate(self.slot_names(cost.graph))}
        for name, value in entries.items():
            out[index[name]] = value
        return out

    # ---- cost, op, report --------------------------------------------------------------
    @abstractmethod
    def shape(self, plan: np.ndarray, geometry: Geometry, cost: CostModel) -> None:
        """Write this kind's effect on the layers into ``geometry`` (at its ``stage``)."""

    @abstractmethod
    def make_op(self, model: nn.Module, graph: LayerGraph, space_value: Any | None) -> Op:
        """The op applying this kind's plan entries to copies of ``model``."""

    def display(self, value: float, cost: CostModel, index: int) -> float:
        """A taken state value as a person reads it (the dashboard's trial parameter)."""
        return float(value)

    def display_range(self, choices: np.ndarray, cost: CostModel, index: int) -> tuple[float, float]:
        """The range of ``display`` over a slot's plans (the dashboard's parameter distribution)."""
        return self.display(choices[0], cost, index), self.display(choices[-1], cost, index)

    def panel(self, entries: Mapping[str, int], channels: Mapping[str, int], layers: list[str],
              searched: bool) -> Panel | None:
        """The report's bar panel of the best plan, or ``None`` when there is nothing to show."""
        return None
