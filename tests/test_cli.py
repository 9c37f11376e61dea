"""Bad input: one line naming the fix, exit 2, no traceback (unless --debug)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autocomp.cli import main
from autocomp.models import build_model


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def search(tmp_path: Path, *args: str) -> list[str]:
    return ["search", "--runs-dir", str(tmp_path), "--no-progress", "--agent", "uniform", *args]


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "resnet2O", "--budget-flops", "0.5"], "unknown model `resnet2O`. Did you mean `resnet20`?"),
    (["--data", "digit", "--budget-flops", "0.5"], "unknown dataset `digit`. Did you mean `digits`?"),
    (["--model", "torchvision:resnet19", "--budget-flops", "0.5"], "Did you mean `torchvision:resnet18`?"),
    (["--budget-flops", "1.5"], "--budget-flops 1.5 is above 1"),
    (["--budget-flops", "-0.2"], "--budget-flops -0.2 is below 0"),
    (["--budget-params", "0.001"], "budget_params=0.001 (131 params) is infeasible: the smallest model"),
    (["--budget-flops", "0.01"], "Raise --budget-flops to at least"),
    (["--data", "imagefolder:/no/such/dir", "--budget-flops", "0.5"], "data directory /no/such/dir does not exist"),
    ([], "no budget given"),
    (["--budget-flops", "0.5", "--resume"], "--resume needs --name"),
    (["--budget-flops", "0.5", "--weights", "/no/such.pt"], "weights file /no/such.pt does not exist"),
    (["--budget-flops", "0.5", "--device", "tpu"], "--device tpu is not"),
    (["--budget-flops", "0.5", "--resize", "200", "--image-size", "224"], "pass --resize >= --image-size"),
    (["--budget-flops", "0.5", "--cache-mb", "-1"], "--cache-mb -1 must be 0"),
    (["--budget-latency", "0.9", "--latency-batch", "301"], "--latency-batch 301 is more than the 300 validation images"),
    (["--budget-latency", "0.9", "--latency-batch", "0"], "--latency-batch 0 and --latency-threads 1 must be at least 1"),
])
def test_bad_input_gives_one_line(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    code, err = run_cli(capsys, *search(tmp_path, *args))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_agent_and_space(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--agent", "dpg"))
    assert code == 2 and "Did you mean `ddpg`?" in err
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--space", "prun"))
    assert code == 2 and "Did you mean `prune`?" in err


def test_weights_that_do_not_fit(capsys, tmp_path: Path) -> None:
    weights = tmp_path / "r20.pt"
    torch.save(build_model("resnet20").state_dict(), weights)
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--weights", str(weights)))
    assert code == 2
    assert "do not fit the model" in err and "Pass the --model these weights were saved from" in err


def test_ddpg_episodes_must_exceed_warmup(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "search", "--runs-dir", str(tmp_path), "--budget-flops", "0.5", "--agent", "ddpg",
                        "--episodes", "50")
    assert code == 2 and "warmup_episodes=100" in err


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "autocomp.cli", "--debug", *search(tmp_path, "--budget-flops", "2")],
                          check=False, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "BudgetFormatError" in proc.stderr


def test_list(capsys) -> None:
    assert main(["list", "agents"]) == 0
    out = capsys.readouterr().out
    assert {"ddpg", "optuna", "nsga2", "random", "uniform"} <= {line.split()[0] for line in out.splitlines()}
    assert main(["list", "models"]) == 0
    assert "resnet20" in capsys.readouterr().out
    assert main(["list", "spaces"]) == 0
    spaces = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"auto", "prune", "transformer"} <= set(spaces) and "attention blocks" in spaces["auto"]
    assert main(["list", "spaces", "auto"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["auto", "The"]  # the name stands apart from its description


def test_model_that_cannot_take_the_data(capsys, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for label in range(2):
            (tmp_path / "img" / split / str(label)).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((8, 8, 3), 40 * i + label, np.uint8)).save(tmp_path / "img" / split / str(label) / f"{i}.png")
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--data", f"imagefolder:{tmp_path / 'img'}",
                                        "--val-size", "4"))
    assert code == 2
    assert "cannot take this data's inputs of shape [3, 8, 8]" in err and len(err.strip().splitlines()) == 1


def test_untrained_user_model_needs_weights(capsys, tmp_path: Path) -> None:
    model_file = tmp_path / "net.py"
    model_file.write_text("from torch import nn\n\ndef net(num_classes=10):\n"
                          "    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(288, num_classes))\n")
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--model", f"{model_file}:net"))
    assert code == 2 and "needs --weights" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line_and_leaves_no_run(capsys, tmp_path: Path) -> None:
    code, err = run_cli(capsys, *search(tmp_path, "--budget-flops", "0.5", "--device", "cuda", "--name", "gpu"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--device cuda: torch sees no CUDA GPU here" in err and "use --device cpu" in err
    assert not (tmp_path / "gpu").exists()


def test_weights_keep_their_module_versions(tmp_path) -> None:
    """torchvision's MNASNet checks its module version on load: a saved state_dict (also one saved
    from ``nn.DataParallel``, keys under ``module.``) loads with its versions intact."""
    import torch
    import torchvision

    from autocomp.models import build_model, load_weights

    saved = torchvision.models.mnasnet0_5(num_classes=10).eval()
    torch.save(saved.state_dict(), tmp_path / "plain.pt")
    torch.save(torch.nn.DataParallel(saved).state_dict(), tmp_path / "parallel.pt")
    x = torch.randn(2, 3, 32, 32)
    for name in ("plain.pt", "parallel.pt"):
        model = build_model("torchvision:mnasnet0_5", num_classes=10)
        load_weights(model, tmp_path / name)
        torch.testing.assert_close(model.eval()(x), saved(x))


def test_a_training_only_head_gets_a_note(capsys, tmp_path: Path, aux_model_file: Path) -> None:
    """Parameters the exported model leaves out are named before a size budget counts them."""
    model = build_model(f"{aux_model_file}:net", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "auxnet.pt")
    code, err = run_cli(capsys, *search(tmp_path, "--budget-params", "0.9", "--model", f"{aux_model_file}:net",
                                        "--weights", str(tmp_path / "auxnet.pt"), "--episodes", "2", "--name", "aux"))
    assert code == 0
    assert "autocomp: note: `aux` (314 parameters) never run in eval mode" in err and "`model.aux = None`" in err


def test_a_latency_search_ends_with_its_predicted_and_measured_latency() -> None:
    from autocomp.cli import latency_line

    summary = {"runtime": "onnxruntime", "threads": 1, "batch": 8, "baseline_measured_ms": 0.439,
               "best_predicted_ms": 0.306, "best_measured_ms": 0.2647, "best_fraction_measured": 0.5862,
               "budget_fraction": 0.697}
    assert latency_line(summary) == ("latency (onnxruntime, 1 thread, batch 8): 0.306 ms predicted, 0.265 ms measured "
                                     "(0.586 of the original timed beside it); budget 0.697 of the original's 0.439 ms")
    assert latency_line({"best_predicted_ms": 1.0, "best_measured_ms": 1.5}) == (
        "latency (torch, 1 thread, batch 1): 1.000 ms predicted, 1.500 ms measured")
    # the machine slowed down during the search: the ms disagree, the fractions timed in turn do not
    drifted = {**summary, "best_measured_ms": 6.6883, "best_predicted_ms": 5.8301, "baseline_measured_ms": 14.6353,
               "original_measured_again_ms": 16.7564, "original_drift": 1.1449, "best_fraction_measured": 0.3992}
    assert latency_line(drifted).splitlines()[1] == (
        "note: the original ran at 16.756 ms beside it, 14% slower than before the search: this machine's load "
        "changed, so compare the fractions of the original (timed in turn), not the ms.")
    assert "note" not in latency_line({**summary, "original_drift": 1.02})


def test_the_finetune_line_compares_with_the_searched_plan_and_notes_a_drop() -> None:
    from autocomp.cli import finetune_lines

    tuned = {"epochs": 2, "distillation": True, "val_accuracy": 0.99, "test_accuracy": 0.9917}
    summary = {"best": {"val_accuracy": 0.9933, "test_accuracy": 0.9944}, "evaluation": {"val_size": 300}}
    line = finetune_lines(tuned, summary, "runs/r")
    assert "val acc 0.9933 -> 0.9900, test acc 0.9944 -> 0.9917" in line
    assert "note: the fine-tuned model scored 1 fewer of the 300 validation images" in line and "--finetuned" in line
    better = finetune_lines(tuned, {"best": {"val_accuracy": 0.95, "test_accuracy": None}}, "runs/r")
    assert "test acc - -> 0.9917" in better and "note" not in better
