"""Does a short fine-tune recover more at another learning rate?

``autocomp finetune`` (distillation from the original, SGD with a cosine schedule, every step's
gradient clipped to norm 5: :func:`autocomp.finetuning.distill`) runs at lr 0.01 by default. This
probe fine-tunes one run's best model (batch norm recalibrated, as ``autocomp finetune`` loads it)
at each learning rate given, for EPOCHS, with 2 torch threads, and prints validation and test
accuracy, so that a learning rate is chosen on validation accuracy:

    python bench/finetune_lr_probe.py RUN_DIR EPOCHS LR [LR ...]

Results are appended to ``bench/results/finetune_lr_probe.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine  # noqa: E402

from autocomp.api import load_compressed  # noqa: E402
from autocomp.evaluate import accuracy  # noqa: E402
from autocomp.finetuning import distill  # noqa: E402
from autocomp.rundir import RunDir  # noqa: E402
from autocomp.runners.setup import load_config_data, prepare_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_lr_probe.json"


def main() -> None:
    run, epochs, rates = Path(sys.argv[1]), int(sys.argv[2]), [float(v) for v in sys.argv[3:]]
    torch.set_num_threads(2)
    rundir = RunDir(run)
    config = rundir.read_config()
    data = load_config_data(config, rundir.read_subsets())
    teacher = prepare_model(config, data, progress=False)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for lr in rates:
        student = load_compressed(run)
        start = time.perf_counter()
        losses = distill(student, teacher, data.train, epochs=epochs, lr=lr, seed=config.seed, progress=False)
        row = {"run": run.name, "trial": rundir.read_summary()["best"].get("trial"), "epochs": epochs, "lr": lr,
               "val_accuracy": accuracy(student, data.val), "test_accuracy": accuracy(student, data.test),
               "epoch_losses": [round(v, 4) for v in losses], "seconds": round(time.perf_counter() - start, 1),
               "commit": commit(), "machine": machine(),
               "command": " ".join(["python bench/finetune_lr_probe.py", *sys.argv[1:]])}
        print(json.dumps(row), flush=True)
        rows.append(row)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
