"""What limits a fine-tuned int8 plan: its int8 layers, their activation ranges, or the fine-tune?

Three checks on runs whose best model ``autocomp finetune`` has fine-tuned (quantisation-aware:
int8 layers fold their batch norm with its running statistics and keep the activation ranges
calibrated before fine-tuning):

    python bench/int8_ft_probe.py saved RUN_DIR [RUN_DIR ...]
        the fine-tuned model as saved; with its int8 activation ranges recorded again on the
        calibration images; with every int8 layer computing in float
    python bench/int8_ft_probe.py float-ft RUN_DIR [RUN_DIR ...]
        the plan's model (before fine-tuning) fine-tuned in float instead (the same distillation,
        ``autocomp.finetuning.distill``; batch norm trained as in any float layer), then its int8
        layers calibrated on the calibration images (post-training quantisation)

Validation and test accuracy in torch (the int8 layers simulated), 2 torch threads.
"""

from __future__ import annotations

import sys

import torch

from autocomp.api import load_compressed
from autocomp.evaluate import accuracy
from autocomp.finetuning import distill
from autocomp.ops.int8 import _Observed, calibrate_int8
from autocomp.rundir import RunDir
from autocomp.runners.setup import load_config_data, prepare_model, process_settings


def _as_float(model: torch.nn.Module) -> None:
    for layer in model.modules():
        if isinstance(layer, _Observed):
            layer.is_calibrated.fill_(False)
            layer._sync()


def _line(label: str, model: torch.nn.Module, data: object) -> None:
    print(f"  {label}: val {accuracy(model, data.val):.4f} test {accuracy(model, data.test):.4f}", flush=True)


def main() -> None:
    mode, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        run = RunDir(path)
        config = run.read_config()
        with process_settings(threads=2, seed=config.seed):
            data = load_config_data(config, run.read_subsets())
            calibration = (x for x, _ in data.calibration.batches(128))
            print(path, flush=True)
            if mode == "saved":
                model = load_compressed(path, finetuned=True)
                _line("as saved", model, data)
                calibrate_int8(model, calibration)
                _line("activation ranges recorded again", model, data)
                _as_float(model)
                _line("int8 layers in float", model, data)
            elif mode == "float-ft":
                teacher = prepare_model(config, data, progress=False)
                model = load_compressed(path)
                _as_float(model)
                distill(model, teacher, data.train, epochs=3, seed=config.seed, progress=False)
                _line("fine-tuned in float", model, data)
                calibrate_int8(model, calibration)
                _line("then int8 calibrated", model, data)
            else:
                raise SystemExit(f"mode {mode!r} is not 'saved' or 'float-ft'")


if __name__ == "__main__":
    main()
