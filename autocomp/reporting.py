"""``autocomp report runs/<name>``: an HTML page with PNG plots of a finished run.

- ``accuracy_vs_flops.png`` / ``accuracy_vs_size.png``: every candidate's validation accuracy
  against its MACs / bytes, the Pareto front, the budget, and the uniform baseline (one setting
  for all layers at the budget);
- ``best_plan.png``: the best plan per layer, like AMC's and HAQ's figures: keep ratio per
  channel group, and bit-width and rank per layer when the space searches them;
- ``best_so_far.png``: the best validation accuracy as the search went on;
- ``accuracy_vs_latency.png`` (under a latency budget): every candidate at its predicted latency,
  the plans timed after the search at their measured latency, and the budget.

Example:
    >>> path = write_report("runs/r20-ddpg")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import torch

from autocomp.budget import latency_drift
from autocomp.config import SearchConfig
from autocomp.device import resolve_device
from autocomp.errors import ConfigError, InfeasibleBudgetError
from autocomp.kinds import KINDS, Panel
from autocomp.plan import Plan
from autocomp.rundir import RunDir


def _trials(run: RunDir, config: SearchConfig) -> list[dict[str, Any]]:
    import optuna

    from autocomp.runners.storage import open_storage
    from autocomp.searchers.record import completed_trials

    study = optuna.load_study(study_name=config.name, storage=open_storage(run, config.storage))
    trials = [dict(t.user_attrs, number=t.number) for t in sorted(completed_trials(study), key=lambda t: t.number)]
    # the plans a search could return: not probes (outside the budgets), not the ones a staged
    # search scored on fewer validation images
    full = max((t.get("val_images", 0) for t in trials), default=0)
    return [t for t in trials if not t.get("probe") and t.get("val_images", 0) == full]


def uniform_baseline(run: RunDir, config: SearchConfig, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The uniform plan at the run's budget: from the run itself, else evaluated now."""
    own = [t for t in trials if t.get("searcher") == "uniform"]
    if own:
        return own[0]
    from autocomp.problem import CompressionProblem, EvalSettings
    from autocomp.runners.setup import load_config_data, prepare_model
    from autocomp.space import SearchSpace

    data = load_config_data(config)
    try:
        device = resolve_device(config.device)
    except ConfigError:  # a run searched on a GPU, reported where there is none
        device = torch.device("cpu")
    budgets, summary = config.budgets(), run.read_summary()
    if budgets.get("latency"):  # the limit the search used, not a fraction of a new measurement
        budgets["latency"] = f"{summary['budgets']['latency']['limit']}us"
    try:
        problem = CompressionProblem(model=prepare_model(config, data, progress=False), data=data,
                                     space=SearchSpace.load(summary["space"]), budgets=budgets,  # as resolved
                                     evaluation=EvalSettings(config.recalibrate, config.calib_batches, config.calib_batch_size),
                                     latency_threads=config.latency_threads, runtime=config.runtime,
                                     latency_batch=config.latency_batch, device=device, progress=False)
    except InfeasibleBudgetError:
        return None  # latency measured now, on a busier machine, leaves no uniform plan within the limit
    level = problem.largest_uniform_level()
    return {**problem.evaluate(problem.uniform_plan(level)).to_dict(), "uniform_level": level}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, accuracy) that no cheaper-or-equal point beats in accuracy."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _best_plan_panels(plan: Plan, summary: dict) -> list[Panel]:
    """The bar charts of ``best_plan.png`` as (title, names, values, y limits), one per action kind
    that has something to show (each kind draws its own, see ``ActionKind.panel``)."""
    searched = set(summary.get("space_actions") or ())
    layers = summary.get("layers") or list(dict.fromkeys(n for k in plan.decisions.values() for n in k))
    blocks = summary.get("attention") or {}  # per attention block its original heads and head width
    panels = [kind.panel(plan.get(kind.key), {b: v[kind.key] for b, v in blocks.items() if kind.key in v} if kind.scope == "attention"
                         else plan.channels, layers, kind.action in searched) for kind in KINDS.values()]
    return [p for p in panels if p is not None]


def _plots(run: RunDir, summary: dict[str, Any], trials: list[dict[str, Any]], uniform: dict[str, Any] | None) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    base = summary["baseline"]
    accs = [t["val_accuracy"] for t in trials]
    for metric, key, label, out in (("flops", "macs", "MACs", "accuracy_vs_flops.png"),
                                    ("size_bytes", "size_bytes", "bytes", "accuracy_vs_size.png")):
        xs = [t[key] / base[metric] for t in trials]
        fig = Figure(figsize=(7, 4.5), dpi=120)
        ax = fig.subplots()
        ax.scatter(xs, accs, s=12, alpha=0.5, label=f"candidates ({len(trials)})")
        front = pareto_front(list(zip(xs, accs)))
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="C3", label="Pareto front")
        if uniform is not None:
            ax.scatter([uniform[key] / base[metric]], [uniform["val_accuracy"]], marker="s", s=60, color="C2",
                       label="uniform (one setting for all layers)", zorder=3)
        best = summary["best"]
        ax.scatter([best[metric] / base[metric]], [best["val_accuracy"]], marker="*", s=160, color="gold",
                   edgecolor="k", label="best", zorder=4)
        budget = summary["budgets"].get("flops" if metric == "flops" else "size")
        if budget:
            ax.axvline(budget["limit"] / base[metric], color="gray", linestyle=":", label=f"{label} budget")
        ax.axhline(base["val_accuracy"], color="gray", linestyle="--", label="original model")
        ax.set_xlabel(f"{label} (fraction of the original{' float32 model' if metric == 'size_bytes' else ''})")
        ax.set_ylabel("validation accuracy (no fine-tuning)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        run.save_figure(fig, out)

    panels = _best_plan_panels(Plan.load(run.best_plan), summary)
    width = max(6.0, 0.35 * max(len(p[1]) for p in panels))
    fig = Figure(figsize=(width, 3.2 * len(panels)), dpi=120)
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (title, names, values, ylim) in zip(axes[:, 0], panels):
        ax.bar(range(len(names)), values, color="C0")
        ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
        if ylim:
            ax.set_ylim(*ylim)
        if all(float(v).is_integer() for v in values) and max(values, default=0) > 1:  # counts: whole ticks
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Best plan: {title} (forward order)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    run.save_figure(fig, "best_plan.png")

    fig = Figure(figsize=(7, 3.5), dpi=120)
    ax = fig.subplots()
    running, best_so_far = 0.0, []
    for acc in accs:
        running = max(running, acc)
        best_so_far.append(running)
    ax.plot(range(1, len(accs) + 1), accs, ".", alpha=0.3, label="candidate")
    ax.plot(range(1, len(accs) + 1), best_so_far, color="C3", label="best so far")
    ax.set_xlabel("candidate")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    run.save_figure(fig, "best_so_far.png")


def _latency_plot(run: RunDir, summary: dict[str, Any], trials: list[dict[str, Any]]) -> bool:
    """``accuracy_vs_latency.png`` for a run under a latency budget: every candidate's validation
    accuracy at its predicted latency, the plans timed after the search at their measured latency
    (a line from their prediction), the budget and its tolerance. False where the run has none."""
    from matplotlib.figure import Figure

    latency = summary.get("latency") or {}
    budget = latency.get("budget_fraction")
    if budget is None or not trials or "latency_us" not in trials[0]:
        return False
    original_us = latency["baseline_measured_ms"] * 1e3
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    ax.scatter([t["latency_us"] / original_us for t in trials], [t["val_accuracy"] for t in trials], s=12, alpha=0.5,
               label=f"candidates at their predicted latency ({len(trials)})")
    check = latency.get("check") or {}
    timed = [r for first in check.get("rounds", []) for r in (first, *first.get("shortlist", []))]
    for r in timed:
        ax.plot([r["predicted_fraction"], r["measured_fraction"]], [r["val_accuracy"]] * 2, color="C1", lw=1)
    if timed:
        ax.scatter([r["measured_fraction"] for r in timed], [r["val_accuracy"] for r in timed], marker="D", s=30,
                   color="C1", label="timed beside the original (measured; line: from its prediction)", zorder=3)
    best = summary["best"]
    if "best_fraction_measured" in latency:
        ax.scatter([latency["best_fraction_measured"]], [best["val_accuracy"]], marker="*", s=160, color="gold",
                   edgecolor="k", label="result (measured)", zorder=4)
    ax.axvline(budget, color="gray", linestyle=":", label="latency budget")
    ax.axvspan(budget, budget * (1 + check.get("tolerance", 0.0)), color="gray", alpha=0.15,
               label="within the timing tolerance")
    ax.axhline(summary["baseline"]["val_accuracy"], color="gray", linestyle="--", label="original model")
    ax.set_xlabel(f"latency at batch {latency.get('batch', 1)} in {latency.get('runtime', 'torch')} "
                  "(fraction of the original's)")
    ax.set_ylabel("validation accuracy (no fine-tuning)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    run.save_figure(fig, "accuracy_vs_latency.png")
    return True


def _latency_fractions(latency: dict[str, Any]) -> str:
    """The best plan's latency as a fraction of the original's: predicted, measured, the budget's."""
    if "best_fraction_measured" not in latency:  # runs from before the paired measurement
        return ""
    budget = latency.get("budget_fraction")
    return (f"<p>As a fraction of the original's latency: {latency['best_fraction_predicted']:.3f} predicted, "
            f"{latency['best_fraction_measured']:.3f} measured (the best plan and the original timed in turn "
            f"after the search){'' if budget is None else f'; budget {budget:.3f}'}.</p>{_drift(latency)}"
            f"{_latency_check(latency)}")


def _drift(latency: dict[str, Any]) -> str:
    """A note where the original's two timings differ by the machine's load (``original_drift``)."""
    drift = latency_drift(latency)
    if drift is None:
        return ""
    return (f"<p>The original ran {100 * abs(drift - 1):.0f}% {'slower' if drift > 1 else 'faster'} beside the best "
            "plan than before the search: the machine's load changed, so the milliseconds above differ by that; "
            "the fractions, timed in turn, do not.</p>")


def _latency_check(latency: dict[str, Any]) -> str:
    """The best plans timed before one became the result (``autocomp.runners.latency_check``)."""
    check = latency.get("check")
    if not check:
        return ""
    rows = []
    for r in check["rounds"]:
        made = ", ".join(map(str, r.get("projected_trials", [])))
        over = r["measured_fraction"] > check["budget_fraction"] * (1 + check.get("tolerance", 0.0))
        side = "a tighter" if over else "the unused"
        which = "this plan alone" if r.get("alone") else "plans"
        again = (f"; {which} projected again onto {side} budget (predictions times {r.get('correction', 1.0):.3f}): "
                 f"trials {made}") if made else ""
        shortlist = "".join(f"<li>trial {t['trial']} (next most accurate): {t['predicted_fraction']:.3f} predicted, "
                            f"{t['measured_fraction']:.3f} measured</li>" for t in r.get("shortlist", []))
        rows.append(f"<li>trial {r['trial']}: {r['predicted_fraction']:.3f} predicted, "
                    f"{r['measured_fraction']:.3f} measured{again}</li>{shortlist}")
    verdict = "holds" if check["holds"] else "was not met by any timed plan; the closest is the result"
    cost = check.get("cost")
    note = "" if cost is None else (
        f"<p>Holding the budget as measured cost {100 * (cost['val_accuracy'] - cost['chosen_val_accuracy']):.1f} points "
        f"of validation accuracy: trial {cost['trial']} (val acc {cost['val_accuracy']:.4f}) runs at "
        f"{cost['measured_fraction']:.4f} of the original's latency; it holds a budget of {cost['budget_to_keep_it']}.</p>")
    return f"<p>Best plans timed before the result was chosen (the budget {verdict}):</p><ul>{''.join(rows)}</ul>{note}"


def _inspection(config: SearchConfig, summary: dict[str, Any]) -> str:
    from autocomp.inspection import inspect_model
    from autocomp.models import build_model
    from autocomp.space import SearchSpace

    try:
        space = SearchSpace.load(summary["space"])  # as the search resolved it
    except ConfigError as exc:  # a space file moved since the search
        return f"(not shown: {exc})"
    with torch.random.fork_rng(devices=[]):  # random weights and tracing inputs: the caller's RNG is kept
        model = build_model(config.model, num_classes=summary["num_classes"]).eval()
        return inspect_model(model, tuple(summary["input_shape"]), space).table()


def write_report(run_dir: str | os.PathLike[str], *, uniform: bool = True) -> Path:
    """Write ``report.html`` and its PNGs into ``run_dir``; return the HTML path."""
    from autocomp.runners.setup import process_settings

    run = RunDir(run_dir)
    run.require_finished()
    config = run.read_config()
    summary = run.read_summary()
    trials = _trials(run, config)
    with process_settings(threads=config.threads, seed=config.seed):
        baseline = uniform_baseline(run, config, trials) if uniform else None
    _plots(run, summary, trials, baseline)
    latency_plot = ('<h2>Accuracy vs latency</h2><img src="accuracy_vs_latency.png" alt="accuracy vs latency">'
                    if _latency_plot(run, summary, trials) else "")
    rows = []
    for label, m in (("original", summary["baseline"]), ("best", summary["best"])):
        rows.append(f"<tr><td>{label}</td><td>{m['flops']:,}</td><td>{m['params']:,}</td><td>{m['size_bytes']:,}</td>"
                    f"<td>{m['val_accuracy']:.4f}</td><td>{m['test_accuracy']:.4f}</td></tr>")
    if baseline is not None:
        rows.append(f"<tr><td>uniform</td><td>{baseline['macs']:,}</td><td>{baseline['params']:,}</td>"
                    f"<td>{baseline['size_bytes']:,}</td><td>{baseline['val_accuracy']:.4f}</td><td>-</td></tr>")
    latency = summary.get("latency")
    latency_html = "" if not latency else (
        f"<p>Batch-{latency.get('batch', 1)} latency on this machine in {html.escape(latency.get('runtime', 'torch'))} "
        f"({latency['threads']} thread): original {latency['baseline_measured_ms']:.3f} ms "
        f"measured; best plan {latency['best_predicted_ms']:.3f} ms predicted by the latency table, "
        f"{latency['best_measured_ms']:.3f} ms measured.</p>{_latency_fractions(latency)}")
    if summary.get("int8_format"):
        latency_html += (f"<p>Int8 layers run as integer kernels in onnxruntime, format "
                         f"<code>{html.escape(summary['int8_format'])}</code> (measured on this machine).</p>")
    seen = _inspection(config, summary)
    title = html.escape(f"autocomp run {summary['name']}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:4px 10px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{title}</h1>
<p>Model <code>{html.escape(summary['model'])}</code> on <code>{html.escape(summary['data'])}</code>, agent
<code>{html.escape(summary['agent'])}</code>, space <code>{html.escape(summary['space'])}</code>,
{summary['candidates']} candidates in {summary['wall_seconds']:.0f} s. FLOPs are MACs.</p>
<table><tr><th></th><th>MACs</th><th>params</th><th>bytes</th><th>val acc</th><th>test acc</th></tr>
{''.join(rows)}</table>
{latency_html}
{latency_plot}
<h2>Accuracy vs MACs</h2><img src="accuracy_vs_flops.png" alt="accuracy vs MACs">
<h2>Accuracy vs bytes</h2><img src="accuracy_vs_size.png" alt="accuracy vs bytes">
<h2>Best plan per layer</h2><img src="best_plan.png" alt="best plan">
<h2>Best so far</h2><img src="best_so_far.png" alt="best so far">
<h2>What autocomp sees in the model</h2>
<p>Each layer, its channel group, MACs and parameters, the values each action of the space may take there, and what is
left out, with the reason (<code>autocomp inspect</code> prints the same).</p>
<pre style="font-size:11px;overflow-x:auto">{html.escape(seen)}</pre>
</body></html>
"""
    return run.write_report(page)
