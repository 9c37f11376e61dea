"""The first steps of a fine-tune, with and without the gradient clipping ``autocomp finetune`` applies.

Runs the fine-tune's loss (distillation at temperature 4, alpha 0.9), optimiser (SGD, Nesterov
momentum 0.9, weight decay 5e-4) and cosine schedule over ``STEPS`` batches of 128 on a run's
best model, printing the mean loss and the gradient's norm (before clipping) every 10 steps,
then the validation accuracy:

    python bench/finetune_clip_probe.py RUN_DIR LR STEPS [CLIP]    # CLIP: the largest gradient norm (default: none)
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from autocomp.api import load_compressed
from autocomp.evaluate import accuracy
from autocomp.rundir import RunDir
from autocomp.runners.setup import load_config_data, prepare_model


def main() -> None:
    run, lr, steps = RunDir(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    clip = float(sys.argv[4]) if len(sys.argv) > 4 else float("inf")
    torch.set_num_threads(2)
    config = run.read_config()
    data = load_config_data(config, run.read_subsets())
    teacher = prepare_model(config, data, progress=False).eval()
    student = load_compressed(run.path)
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    student.train()
    done, total = 0, 0.0
    for x, y in data.train.batches(128, shuffle=True, generator=torch.Generator().manual_seed(0), augment=True):
        logits = student(x)
        with torch.no_grad():
            soft = F.softmax(teacher(x) / 4, 1)
        loss = 0.9 * 16 * F.kl_div(F.log_softmax(logits / 4, 1), soft, reduction="batchmean") + 0.1 * F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
        optimizer.step()
        schedule.step()
        total, done = total + loss.item(), done + 1
        if done % 10 == 0:
            print(f"step {done} loss {total / 10:.3f} gradient norm {norm:.2f}", flush=True)
            total = 0.0
        if done >= steps:
            break
    student.eval()
    print(f"val accuracy {accuracy(student, data.val):.4f}")


if __name__ == "__main__":
    main()
