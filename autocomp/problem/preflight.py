"""Fail early: build and run compressed candidates before a search starts, never mid-search.

A model autocomp cannot compress (an op the dependency graph cannot follow, attention whose
width must stay divisible by its heads, ...) would otherwise fail at the first candidate, after
the run directory was made. :func:`preflight` builds the smallest plan of the space and one
random plan, runs each on two validation images, and on failure finds the one decision that
breaks the model, so the error can name its layer.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from autocomp.errors import IncompatibleModelError
from autocomp.kinds import by_key
from autocomp.plan import Plan
from autocomp.problem.decisions import DecisionSpace
from autocomp.problem.evaluator import Evaluator


def _runs(evaluator: Evaluator, plan: Plan, example: torch.Tensor) -> Exception | None:
    try:
        model = evaluator.compressor.apply(plan)
        with torch.no_grad():
            model.eval()(example)
    except Exception as exc:  # noqa: BLE001 - any failure of the compressed model is reported, not raised
        return exc
    return None


def _single_decisions(plan: Plan, decisions: DecisionSpace) -> Iterator[tuple[str, str, int, Plan]]:
    """Every decision of ``plan`` that compresses something, alone in a plan of its own."""
    full = decisions.plan_of(decisions.full_state())
    for key, entries in plan.decisions.items():
        for name, value in entries.items():
            if full.get(key).get(name) != value:
                yield key, name, value, Plan({**full.decisions, key: {**full.get(key), name: value}}, plan.channels)


def preflight(decisions: DecisionSpace, evaluator: Evaluator, *, random_plan: Plan) -> None:
    """Raise :class:`IncompatibleModelError` (one line, naming the layer) if the smallest plan of
    the space or ``random_plan`` cannot be built and run."""
    example = evaluator.val.example(2)
    smallest = decisions.plan_of(decisions.min_state())
    for label, plan in (("smallest", smallest), ("a random", random_plan)):
        error = _runs(evaluator, plan, example)
        if error is None:
            continue
        culprit = next(((k, n, v, e) for k, n, v, p in _single_decisions(plan, decisions)
                        if (e := _runs(evaluator, p, example)) is not None), None)
        reason = str(error).splitlines()[0] if str(error) else ""
        if culprit is None:
            raise IncompatibleModelError(
                f"the {label} plan of space `{decisions.space.name}` breaks this model ({type(error).__name__}: "
                f"{reason}): try another --space, or report the model's architecture.")
        key, name, value, error = culprit
        reason = str(error).splitlines()[0] if str(error) else ""
        of = f" of {plan.channels[name]}" if name in plan.channels else ""
        raise IncompatibleModelError(
            f"`{name}` cannot be compressed ({key}={value}{of}: {type(error).__name__}: {reason}): leave it out with a "
            f"space rule `- layers: [\"{name}\"]` and `{by_key(key).action}: off`, or use another --space.")


def random_actions(decisions: DecisionSpace, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (len(decisions.steps), len(decisions.kinds)))
