"""The decision space of an episode: its steps, the values each may take, and encode/decode.

One step per layer (forward order) that takes at least one action of the search space; a
unit-scoped action (channels kept) is decided at its unit's first layer. A :class:`State` holds
one state array per action kind (every kind, searched or not: unsearched slots stay at their
only value).

Example:
    >>> decisions = DecisionSpace(cost, SearchSpace.load("prune"))  # doctest: +SKIP
    >>> decisions.plan_of(decisions.full_state()).get("keep") == {u.name: u.channels for u in cost.graph.units}  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autocomp.cost import CostModel
from autocomp.kinds import KINDS, ActionKind, by_key, by_stage
from autocomp.plan import Plan
from autocomp.space import SearchSpace


@dataclass(frozen=True)
class Step:
    """One decision of an episode: the actions of one layer. ``slots``/``choices``: action name
    -> the slot it sets (unit or layer index) and the values allowed there, for the actions taken
    here; ``unit``: the unit decided here, if a unit-scoped action is."""

    index: int
    layer: str
    layer_index: int
    slots: Mapping[str, int]
    choices: Mapping[str, np.ndarray]
    unit: int | None


@dataclass(frozen=True)
class Decision:
    """One searched value: a slot of one action kind with more than one allowed value, taken at
    step ``step`` from entry ``column`` of the step's action vector."""

    step: int
    column: int
    key: str
    slot: int
    choices: np.ndarray

    @property
    def top(self) -> int:
        return len(self.choices) - 1


@dataclass
class State:
    """State arrays of a (partial) plan, by kind key."""

    values: dict[str, np.ndarray]

    def copy(self) -> State:
        return State({k: v.copy() for k, v in self.values.items()})


def position(action: float) -> float:
    """An action in [-1, 1] as a position in [0, 1] along a slot's allowed values."""
    return (float(np.clip(action, -1, 1)) + 1) / 2


def nearest(choices: np.ndarray, action: float) -> int:
    """Index of the allowed value an action in [-1, 1] asks for: the actions are spread evenly
    over the allowed values (so 2, 4, 8 and 32 bits each get a quarter of the range)."""
    return int(np.rint(position(action) * (len(choices) - 1)))


def index_of(choices: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(choices - value)))


class DecisionSpace:
    def __init__(self, cost: CostModel, space: SearchSpace) -> None:
        self.cost = cost
        self.space = space
        graph = cost.graph
        self.kinds: tuple[ActionKind, ...] = tuple(KINDS[a] for a in space.actions)
        layers = graph.layers
        ranges = [space.for_layer(layer.name, graph.tags(layer)) for layer in layers]
        self.choices: dict[str, list[np.ndarray]] = {}
        decided_at: dict[str, dict[int, int]] = {}  # kind key -> layer index -> slot
        for kind in KINDS.values():
            at = kind.slot_layers(graph)
            where = [ranges[i].get(kind.action) if i is not None else None for i in at]
            self.choices[kind.key] = [kind.choices(r, cost, i) for i, r in enumerate(where)]
            decided_at[kind.key] = {i: slot for slot, i in enumerate(at) if i is not None}
        steps: list[Step] = []
        for i, layer in enumerate(layers):
            slots = {}
            for kind in self.kinds:
                slot = decided_at[kind.key].get(i)
                if slot is not None and len(self.choices[kind.key][slot]) > 1:
                    slots[kind.action] = slot
            if slots:
                unit = next((s for a, s in slots.items() if KINDS[a].scope == "unit"), None)
                steps.append(Step(len(steps), layer.name, i, slots,
                                  {a: self.choices[KINDS[a].key][s] for a, s in slots.items()}, unit))
        self.steps = steps
        column = {kind.action: c for c, kind in enumerate(self.kinds)}
        self.searched: list[Decision] = [
            Decision(step.index, column[action], KINDS[action].key, slot, step.choices[action])
            for step in steps for action, slot in sorted(step.slots.items(), key=lambda item: column[item[0]])
        ]
        self.tops = np.array([d.top for d in self.searched], dtype=np.int64)
        self._full = self._pick(-1)
        # per kind: which searched decisions set it, their slots, and their choices padded into one
        # matrix, so that ``state_at`` is one gather per kind (the projection calls it thousands of times)
        self._gather: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for kind in KINDS.values():
            mine = [d for d, decision in enumerate(self.searched) if decision.key == kind.key]
            if mine:
                width = max(len(self.searched[d].choices) for d in mine)
                table = np.array([np.pad(self.searched[d].choices, (0, width - len(self.searched[d].choices)), mode="edge")
                                  for d in mine], dtype=kind.dtype)
                self._gather[kind.key] = (np.array(mine), np.array([self.searched[d].slot for d in mine]), table)

    @property
    def action_kinds(self) -> tuple[str, ...]:
        return tuple(kind.action for kind in self.kinds)

    def _pick(self, index: int) -> State:
        return State({kind.key: np.array([c[index] for c in self.choices[kind.key]], dtype=kind.dtype)
                      for kind in KINDS.values()})

    def full_state(self) -> State:
        """Every decision at its largest value (nothing compressed beyond what rules fix)."""
        return self._pick(-1)

    def min_state(self) -> State:
        return self._pick(0)

    def uniform_state(self, level: float) -> State:
        """One setting for every slot: each kind's value at ``level`` (see its ``uniform_threshold``),
        the largest allowed value not above it."""
        values = {}
        for kind in KINDS.values():
            space_value = self.space.ranges.get(kind.action)
            picked = []
            for i, choices in enumerate(self.choices[kind.key]):
                fit = choices[choices <= kind.uniform_threshold(level, space_value, self.cost, i) + 1e-9]
                picked.append(fit[-1] if len(fit) else choices[0])
            values[kind.key] = np.array(picked, dtype=kind.dtype)
        return State(values)

    def plan_arrays(self, state: State) -> dict[str, np.ndarray]:
        """Plan arrays (what a plan stores) of a state, kind by kind in stage order."""
        done: dict[str, np.ndarray] = {}
        for kind in by_stage():
            done[kind.key] = kind.plan_array(state.values[kind.key], done, self.cost)
        return done

    def plan_of(self, state: State) -> Plan:
        return self.cost.plan_of(self.plan_arrays(state))

    # ---- searched decisions as index vectors -----------------------------------------
    def state_at(self, indices: Sequence[int] | np.ndarray) -> State:
        """The state with every searched decision at its allowed value number ``indices[d]``
        (every other slot at its only value)."""
        state = self._full.copy()
        indices = np.asarray(indices, dtype=np.int64)
        for key, (mine, slots, table) in self._gather.items():
            state.values[key][slots] = table[np.arange(len(mine)), indices[mine]]
        return state

    def indices_of(self, plan: Plan) -> np.ndarray:
        """Each searched decision's allowed value number in ``plan``."""
        arrays = self.cost.plan_arrays(plan)
        done = {kind.key: arrays[kind.key] for kind in by_stage() if kind.stage == 0}
        return np.array([index_of(d.choices, by_key(d.key).state_value(arrays[d.key], done, self.cost, d.slot))
                         for d in self.searched], dtype=np.int64)

    def positions(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
        """Each searched decision's position in [0, 1] along its allowed values, as ``actions`` ask."""
        rows = self.rows(actions)
        return np.array([position(rows[d.step, d.column]) for d in self.searched])

    def actions_at(self, indices: Sequence[int] | np.ndarray) -> list[list[float]]:
        """Actions (one row per step) that ask for exactly the values ``indices`` name; 0 where a
        step does not take an action kind."""
        rows = np.zeros((len(self.steps), len(self.kinds)))
        for decision, index in zip(self.searched, indices):
            rows[decision.step, decision.column] = 2 * index / decision.top - 1
        return rows.tolist()

    def actions_of(self, plan: Plan) -> list[list[float]]:
        """Actions that reproduce ``plan`` when it is feasible (e.g. to record a uniform plan)."""
        return self.actions_at(self.indices_of(plan))

    def observe(self, step: Step, taken: Mapping[str, float]) -> dict[str, float]:
        """Taken values of ``step`` as the environment observes them, in [0, 1]."""
        return {a: KINDS[a].observe(v, self.cost, step.slots[a]) for a, v in taken.items()}

    def display(self, step: Step, taken: Mapping[str, float]) -> dict[str, float]:
        """Taken values of ``step`` as a person reads them (keep ratio, bits, rank ratio)."""
        return {a: KINDS[a].display(v, self.cost, step.slots[a]) for a, v in taken.items()}

    def rows(self, actions: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
        return np.asarray(actions, dtype=float).reshape(len(self.steps), len(self.kinds))
