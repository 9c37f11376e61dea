"""Training and fine-tuning steps (autocomp.training.train)."""

from __future__ import annotations

import copy

import pytest
import torch

from autocomp.training import train


def _change(model: torch.nn.Module, before: torch.nn.Module) -> float:
    deltas = [(p - q).detach().flatten() for p, q in zip(model.parameters(), before.parameters())]
    return float(torch.cat(deltas).norm())


def test_a_clipped_step_moves_the_weights_only_as_far_as_the_clip_allows(digits_model, digits_data) -> None:
    """One SGD step (Nesterov momentum 0.9, weight decay 5e-4) from a gradient clipped to a norm of
    1e-9 leaves only the weight decay: the weights move by lr * 1.9 * 5e-4 * |w|. Unclipped, further."""
    lr = 1.0
    clipped, free = copy.deepcopy(digits_model), copy.deepcopy(digits_model)
    weight = float(torch.cat([p.detach().flatten() for p in digits_model.parameters()]).norm())
    train(clipped, digits_data.train, epochs=1, lr=lr, max_steps=1, augment=False, progress=False, clip_norm=1e-9)
    train(free, digits_data.train, epochs=1, lr=lr, max_steps=1, augment=False, progress=False)
    decay_only = lr * 1.9 * 5e-4 * weight  # max_steps=1: the cosine schedule's single step runs at lr
    assert _change(clipped, digits_model) == pytest.approx(decay_only, rel=1e-3)
    assert _change(free, digits_model) > 1.05 * decay_only


def test_distill_is_the_clipped_fine_tune_for_any_model(digits_model, digits_data, monkeypatch) -> None:
    """``autocomp.finetuning.distill`` (what ``autocomp finetune`` runs, and what benchmarks give a
    peer's model) clips every step at ``CLIP_NORM``: with the clip made tiny, its weights are those
    of a training clipped the same way, and not those of an unclipped one."""
    from autocomp import finetuning

    monkeypatch.setattr(finetuning, "CLIP_NORM", 1e-9)
    tuned, clipped, free = (copy.deepcopy(digits_model) for _ in range(3))
    kwargs = {"epochs": 1, "lr": 0.5, "teacher": digits_model, "seed": 3, "progress": False}
    finetuning.distill(tuned, digits_model, digits_data.train, epochs=1, lr=0.5, seed=3, progress=False)
    train(clipped, digits_data.train, clip_norm=1e-9, **kwargs)
    train(free, digits_data.train, **kwargs)
    assert _change(tuned, clipped) == 0.0
    assert _change(tuned, free) > 0.0
