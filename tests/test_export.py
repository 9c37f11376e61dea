"""Exported models run without autocomp and agree with PyTorch; the report renders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autocomp
from autocomp.config import SearchConfig
from autocomp.exporting import export_run
from autocomp.reporting import pareto_front, write_report
from autocomp.runners import run_search

BLOCK_AUTOCOMP = "import sys; sys.modules['autocomp'] = None; "


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    return run_search(SearchConfig(budget_flops="0.5", agent="random", episodes=12, name="r", runs_dir=str(runs)),
                      progress=False).run_dir


def reference(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = autocomp.load_compressed(run_dir)
    with torch.inference_mode():
        return x, model(x)


def test_torchscript_runs_without_autocomp(run_dir: Path, tmp_path: Path) -> None:
    info = export_run(run_dir, fmt="torchscript", out_dir=tmp_path)
    assert info["max_abs_diff"] <= 1e-4 and info["latency_s"] > 0
    x, y = reference(run_dir)
    torch.save(x, tmp_path / "x.pt")
    code = (BLOCK_AUTOCOMP + "import torch; m = torch.jit.load(sys.argv[1]).eval(); "
            "x = torch.load(sys.argv[2]); print(repr(m(x).tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / info["file"]), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, check=True).stdout
    assert torch.allclose(torch.tensor(eval(out)), y, atol=1e-4)
    assert json.loads((tmp_path / "export-torchscript.json").read_text())["size_bytes"] == (tmp_path / info["file"]).stat().st_size


def test_onnx_runs_any_batch_size_in_onnxruntime(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    info = export_run(run_dir, fmt="onnx", out_dir=tmp_path)
    assert info["max_abs_diff"] <= 1e-4 and info["batch_sizes_checked"] == [1, 5]
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = autocomp.load_compressed(run_dir)
    with torch.inference_mode():
        y = model(x)
    code = (BLOCK_AUTOCOMP + "import numpy as np, onnxruntime as ort; s = ort.InferenceSession(sys.argv[1]); "
            "x = np.load(sys.argv[2]); name = s.get_inputs()[0].name; "
            "print(repr([s.run(None, {name: x[:1]})[0].tolist(), s.run(None, {name: x})[0].tolist()]))")
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / info["file"]), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, check=True).stdout
    one, five = eval(out)
    assert torch.allclose(torch.tensor(one), y[:1], atol=1e-4)
    assert torch.allclose(torch.tensor(five), y, atol=1e-4)
    assert json.loads((run_dir / "summary.json").read_text())["exports"]["onnx"]["dir"] == str(tmp_path.resolve())


def test_export_states_its_difference_out_of_the_largest_output(capsys, run_dir: Path, tmp_path: Path) -> None:
    from autocomp.cli import main

    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path), "--no-accuracy"]) == 0
    info = json.loads((tmp_path / "export-torchscript.json").read_text())
    example = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # the export's two inputs
    batch = torch.cat([example, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))])
    model = autocomp.load_compressed(run_dir)
    with torch.inference_mode():
        assert info["max_abs_output"] == max(float(model(x).abs().max()) for x in (example, batch))
    share = info["max_abs_diff"] / info["max_abs_output"]
    assert f"max |output - PyTorch| = {info['max_abs_diff']:.2e} ({share:.2%} of the largest output" in capsys.readouterr().out


def test_pt2_runs_without_autocomp_at_any_batch_size(run_dir: Path, tmp_path: Path) -> None:
    info = export_run(run_dir, fmt="pt2", out_dir=tmp_path, latency_batch=8)
    assert info["file"] == "model.pt2" and info["max_abs_diff"] <= 1e-4 and info["batch_sizes_checked"] == [1, 5]
    x, y = reference(run_dir)
    torch.save(x, tmp_path / "x.pt")
    code = (BLOCK_AUTOCOMP + "import torch; m = torch.export.load(sys.argv[1]).module(); "
            "x = torch.load(sys.argv[2]); print(repr([m(x[:1]).tolist(), m(x).tolist()]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / info["file"]), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, check=True).stdout
    one, four = eval(out)
    assert torch.allclose(torch.tensor(one), y[:1], atol=1e-4) and torch.allclose(torch.tensor(four), y, atol=1e-4)


def test_export_record_measures_the_runtime(run_dir: Path, tmp_path: Path) -> None:
    """Latency at batch 1 and at the latency batch, the original's in the same runtime, and the
    written file's test accuracy in its runtime, equal to PyTorch's on the same images."""
    from autocomp.evaluate import accuracy
    from autocomp.runners.setup import load_config_data

    info = export_run(run_dir, fmt="onnx" if _has_onnxruntime() else "pt2", out_dir=tmp_path, latency_batch=16)
    assert info["latency_batch"] == 16 and info["latency_batch_s"] > info["latency_s"] > 0
    assert info["original_latency_s"] > 0 and info["speedup"] == round(info["original_latency_s"] / info["latency_s"], 3)
    summary = json.loads((run_dir / "summary.json").read_text())
    test = load_config_data(autocomp.RunDir(run_dir).read_config()).test
    assert info["test_accuracy"] == pytest.approx(accuracy(autocomp.load_compressed(run_dir), test), abs=1 / len(test))
    assert info["test_accuracy"] == pytest.approx(summary["best"]["test_accuracy"], abs=1 / len(test))
    stored = json.loads((tmp_path / f"export-{info['format']}.json").read_text())
    assert stored["test_accuracy"] == info["test_accuracy"] and stored["speedup_batch"] == info["speedup_batch"]


def test_the_export_and_the_original_are_timed_in_turn(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The speed-ups in ``export-<format>.json`` come from the export and the original timed in turn
    (rounds over both, at batch 1 and at the latency batch), not from windows minutes apart."""
    from autocomp import exporting, runtimes

    windows: list[tuple[int, int]] = []  # (batch, runner) of each timing window, in order
    seconds = runtimes.fastest_seconds

    def window(run, x, **kwargs):
        windows.append((len(x), run))
        return seconds(run, x, **kwargs)

    monkeypatch.setattr(runtimes, "fastest_seconds", window)
    info = exporting.export_run(run_dir, fmt="pt2", out_dir=tmp_path, latency_batch=4, accuracy=False)
    assert [b for b, _ in windows] == [1] * 10 + [4] * 10  # 5 rounds over the two, at each batch
    runs = [r for _, r in windows[:10]]
    assert runs[0] is not runs[1] and runs == runs[:2] * 5 and [r for _, r in windows[10:]] == runs
    assert info["speedup_batch"] == round(info["original_latency_batch_s"] / info["latency_batch_s"], 3)


def test_a_run_saved_without_module_versions_loads(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Weights saved as a plain dict (runs from before the module versions were kept) load into a
    model whose modules check their version on load, as torchvision's MNASNet does."""
    import shutil

    x, want = reference(run_dir)
    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    best = autocomp.RunDir(copy).best_model
    torch.save(dict(torch.load(best, weights_only=True)), best)
    load = torch.nn.Conv2d._load_from_state_dict

    def checked(self, state_dict, prefix, local_metadata, *args):
        if local_metadata.get("version") is None:
            raise ValueError("version should be set instead of None")
        return load(self, state_dict, prefix, local_metadata, *args)

    monkeypatch.setattr(torch.nn.Conv2d, "_load_from_state_dict", checked)
    model = autocomp.load_compressed(copy)
    with torch.inference_mode():
        assert torch.equal(model(x), want)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_state_dict_export_reloads(run_dir: Path, tmp_path: Path) -> None:
    info = export_run(run_dir, fmt="state_dict", out_dir=tmp_path)
    assert (tmp_path / "plan.json").is_file()
    state = torch.load(tmp_path / info["file"], weights_only=True)
    model = autocomp.load_compressed(run_dir)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_report_renders(run_dir: Path) -> None:
    page = write_report(run_dir).read_text()
    for png in ("accuracy_vs_flops.png", "best_plan.png", "best_so_far.png"):
        data = (run_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f'src="{png}"' in page
    assert "uniform" in page and "best" in page
    assert "What autocomp sees in the model" in page and "classifier: its outputs are the classes" in page


def test_pareto_front() -> None:
    points = [(0.5, 0.7), (0.4, 0.72), (0.3, 0.6), (0.45, 0.71), (0.5, 0.8)]
    assert pareto_front(points) == [(0.3, 0.6), (0.4, 0.72), (0.5, 0.8)]


def test_bad_format_and_missing_run(capsys, tmp_path: Path) -> None:
    from autocomp.cli import main

    for command in ("report", "export", "finetune", "dashboard"):
        assert main([command, str(tmp_path / "nope")]) == 2
        assert f"{tmp_path / 'nope'} is not a run directory (no config.yaml)" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: half\n")
    assert main(["export", str(tmp_path / "half")]) == 2
    assert "is not a finished run (missing" in capsys.readouterr().err


def test_finetuning_with_distillation_improves_a_pruned_model(tmp_path: Path, digits_data) -> None:
    from autocomp.cost import measure_cost
    from autocomp.evaluate import accuracy
    from autocomp.finetuning import finetune_run

    run = run_search(SearchConfig(budget_flops="0.12", agent="uniform", name="u", runs_dir=str(tmp_path)), progress=False)
    before = run.summary["best"]
    result = finetune_run(run.run_dir, epochs=3, progress=False)
    assert result["val_accuracy"] > before["val_accuracy"] + 0.01
    assert result["test_accuracy"] > before["test_accuracy"]
    tuned = autocomp.load_compressed(run.run_dir, finetuned=True)
    assert measure_cost(tuned, (1, 8, 8)).macs == before["flops"]  # pruned channels stay gone
    assert accuracy(tuned, digits_data.test) == pytest.approx(result["test_accuracy"])
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["finetuned"]["test_accuracy"] == result["test_accuracy"] and summary["finetuned"]["distillation"]
