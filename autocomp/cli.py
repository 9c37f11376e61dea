"""``autocomp`` command line: builds a config and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from autocomp import api
from autocomp.budget import latency_drift
from autocomp.config import SearchConfig
from autocomp.errors import AutocompError, ConfigError
from autocomp.rundir import RunDir


def _agent_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. warmup_episodes=20)")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


class SearchCommand:
    help = "search a compression plan under a budget"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        d = SearchConfig()
        g = p.add_argument_group("model")
        g.add_argument("--model", default=d.model, help="registry name, torchvision:NAME or path/file.py:factory (default: %(default)s)")
        g.add_argument("--weights", help="state_dict of the trained model (the default model is trained on the spot)")
        g.add_argument("--num-classes", type=int, help="classes of the model's output (default: the data's)")
        g = p.add_argument_group("data")
        g.add_argument("--data", default=d.data, help="digits, cifar10 or imagefolder:PATH (default: %(default)s)")
        g.add_argument("--data-dir", help="where cifar10 lives (downloaded there when online)")
        g.add_argument("--preprocess", help="JSON with normalize: {mean, std}, the preprocessing your model expects")
        g.add_argument("--mean", help="per-channel mean after scaling to [0,1], e.g. 0.4914,0.4822,0.4465")
        g.add_argument("--std", help="per-channel std, e.g. 0.247,0.2435,0.2616")
        g.add_argument("--image-size", type=int, help="resize ImageFolder images to N x N (with --resize: the centre crop's side)")
        g.add_argument("--resize", type=int, help="resize the shorter side to N first, then centre-crop --image-size "
                                                  "(ImageNet style: --resize 256 --image-size 224)")
        g.add_argument("--val-size", type=int, help="validation images carved from the training split (digits 300, else 1000)")
        g.add_argument("--loader-workers", type=int, help="DataLoader worker processes for streamed images (default: half the cores, at most 8)")
        g.add_argument("--cache-mb", type=int, default=d.cache_mb,
                       help="decode the validation and calibration images into memory when they fit in this many MB "
                            "(default: %(default)s; 0 streams them too)")
        g.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                       help="keep memory at one candidate's peak over a long search of a big model "
                            "(big blocks by their own mmap; slower, see README; default: on for images of "
                            "128x128 pixels or more)")
        g = p.add_argument_group("budgets (a fraction of the original such as 0.5, or an amount such as 20M; all must hold)")
        g.add_argument("--budget-flops", help="MACs budget")
        g.add_argument("--budget-params", help="parameter budget")
        g.add_argument("--budget-size", help="bytes of the stored model (fraction of its float32 bytes, or e.g. 200KB, 1.5MB)")
        g.add_argument("--budget-latency", help="latency on this machine in --runtime at --latency-batch (fraction of the "
                                                "original's, or e.g. 3ms)")
        g.add_argument("--runtime", default=d.runtime, choices=["onnxruntime", "torch"],
                       help="where latency is measured: an onnxruntime CPU session or eager torch (default: %(default)s)")
        g.add_argument("--latency-batch", type=int, default=d.latency_batch,
                       help="batch size latency is measured at (default: %(default)s)")
        g.add_argument("--latency-threads", type=int, default=d.latency_threads,
                       help="threads latency is measured with (default: %(default)s)")
        g = p.add_argument_group("search")
        g.add_argument("--agent", default=d.agent, help="preset from agents/ or a .yaml file (default: %(default)s)")
        g.add_argument("--agent-opt", action="append", type=_agent_option, default=[], metavar="KEY=VALUE",
                       help="override one agent setting, e.g. --agent-opt warmup_episodes=20")
        g.add_argument("--space", default=d.space, help="preset from search_spaces/ or a .yaml file (default: auto: transformer for a model with attention blocks, else prune)")
        g.add_argument("--warm-start", choices=["sensitivity"],
                       help="first find a plan by per-layer sensitivity and dynamic programming; the agent starts from it "
                            "(its evaluations count towards --episodes)")
        g.add_argument("--episodes", type=int, help="candidates to evaluate (default: the agent preset's)")
        g.add_argument("--reward", default=d.reward, choices=["error", "error_log_flops"])
        g.add_argument("--no-recalibrate", action="store_true", help="score candidates without batch-norm recalibration")
        g.add_argument("--calib-batches", type=int, default=d.calib_batches)
        g.add_argument("--calib-batch-size", type=int, default=d.calib_batch_size)
        g.add_argument("--seed", type=int, default=d.seed)
        g.add_argument("--threads", type=int, help="torch threads (default: all cores)")
        g.add_argument("--device", default=d.device, help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N: "
                                                          "where candidates are scored and fine-tuned (default: %(default)s)")
        g = p.add_argument_group("run")
        g.add_argument("--name", help="run name: output goes to RUNS_DIR/NAME (default: model-agent-time)")
        g.add_argument("--runs-dir", default=d.runs_dir)
        g.add_argument("--resume", action="store_true", help="continue the run NAME from its storage")
        g.add_argument("--storage", default=d.storage, help="sqlite (default), journal (many writers on one host) or a database URL")
        g = p.add_argument_group("parallel (Ray; pip install 'autocomp[ray]')")
        g.add_argument("--workers", type=int, default=d.workers, help="Ray workers evaluating candidates in parallel")
        g.add_argument("--address", help="Ray cluster to use: auto or HOST:PORT (default: a local Ray instance)")
        g.add_argument("--gpus-per-worker", type=float, help="GPU share of each Ray worker, e.g. 0.5 puts two on one GPU "
                                                             "(default with --device cuda: the cluster's GPUs split evenly, at most 1 each; else 0)")
        g.add_argument("--no-progress", action="store_true")
        g.add_argument("--finetune-epochs", type=int, default=0, help="then fine-tune the best model with distillation")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        config = SearchConfig(
            model=args.model, weights=args.weights, num_classes=args.num_classes, data=args.data,
            data_dir=args.data_dir, mean=args.mean, std=args.std, preprocess=args.preprocess,
            image_size=args.image_size, resize=args.resize, val_size=args.val_size, loader_workers=args.loader_workers,
            cache_mb=args.cache_mb, low_memory=args.low_memory, device=args.device, gpus_per_worker=args.gpus_per_worker, budget_flops=args.budget_flops,
            budget_params=args.budget_params, budget_size=args.budget_size,
            budget_latency=args.budget_latency, latency_threads=args.latency_threads, runtime=args.runtime,
            latency_batch=args.latency_batch, agent=args.agent, agent_options=dict(args.agent_opt),
            space=args.space, warm_start=args.warm_start, episodes=args.episodes, reward=args.reward, recalibrate=not args.no_recalibrate,
            calib_batches=args.calib_batches, calib_batch_size=args.calib_batch_size, seed=args.seed,
            threads=args.threads, name=args.name, runs_dir=args.runs_dir, storage=args.storage,
            workers=args.workers, address=args.address,
        )
        try:
            s = api.search(config=config, resume=args.resume, progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished candidate is stored. Continue with: "
                  f"autocomp search --name {config.name or '<name>'} --runs-dir {config.runs_dir} --resume", file=sys.stderr)
            return 130
        run = RunDir(Path(config.runs_dir) / s["name"])
        base, best = s["baseline"], s["best"]
        print(f"best of {s['candidates']} candidates: MACs {best['flops']:,} ({best['flops'] / base['flops']:.3f} of "
              f"{base['flops']:,}), params {best['params']:,}, bytes {best['size_bytes']:,} "
              f"({best['size_bytes'] / base['size_bytes']:.3f}), val acc {best['val_accuracy']:.4f} "
              f"(original {base['val_accuracy']:.4f}), test acc {best['test_accuracy']:.4f} (original {base['test_accuracy']:.4f})")
        if s.get("latency"):
            print(latency_line(s["latency"]))
        if args.finetune_epochs > 0:
            r = api.finetune(run.path, epochs=args.finetune_epochs, progress=not args.no_progress)
            print(finetune_lines(r, s, run.path))
        print(f"run saved in {run}/ ; dashboard: autocomp dashboard {run}")
        return 0


def finetune_lines(r: dict[str, Any], summary: dict[str, Any], run_dir: str | Path) -> str:
    """What a fine-tune gave against the searched plan's scores (from the run's ``summary``), with
    a note when it scored fewer validation images."""
    best = summary["best"]

    def acc(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    line = (f"fine-tuned {r['epochs']} epochs{' with distillation' if r['distillation'] else ''}: val acc "
            f"{acc(best.get('val_accuracy'))} -> {acc(r['val_accuracy'])}, test acc {acc(best.get('test_accuracy'))} -> "
            f"{acc(r['test_accuracy'])} (searched -> fine-tuned), written to {run_dir}/finetuned/")
    if best.get("val_accuracy") is not None and r["val_accuracy"] < best["val_accuracy"]:
        size = summary.get("evaluation", {}).get("val_size")
        fewer = f"{round((best['val_accuracy'] - r['val_accuracy']) * size)} fewer of the {size}" if size else "fewer"
        line += (f"\nnote: the fine-tuned model scored {fewer} validation images than the searched plan; the "
                 "searched weights stay in best/, and `autocomp export` writes them unless --finetuned is given.")
    return line


def latency_line(lat: dict[str, Any]) -> str:
    """The best plan's latency as the search predicted and measured it, against its budget."""
    threads = lat.get("threads", 1)
    line = (f"latency ({lat.get('runtime', 'torch')}, {threads} thread{'s' * (threads > 1)}, batch {lat.get('batch', 1)}): "
            f"{lat['best_predicted_ms']:.3f} ms predicted, {lat['best_measured_ms']:.3f} ms measured")
    if lat.get("best_fraction_measured") is not None:
        line += f" ({lat['best_fraction_measured']:.3f} of the original timed beside it)"
    if lat.get("budget_fraction") is not None:
        line += f"; budget {lat['budget_fraction']:.3f} of the original's {lat['baseline_measured_ms']:.3f} ms"
    drift = latency_drift(lat)
    if drift is not None:
        line += (f"\nnote: the original ran at {lat['original_measured_again_ms']:.3f} ms beside it, "
                 f"{100 * abs(drift - 1):.0f}% {'slower' if drift > 1 else 'faster'} than before the search: this "
                 "machine's load changed, so compare the fractions of the original (timed in turn), not the ms.")
    return line


class ListCommand:
    help = "list models, datasets, agents or spaces"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("what", choices=["models", "datasets", "agents", "spaces"])
        p.add_argument("pattern", nargs="?", default="*")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from autocomp.data import list_datasets
        from autocomp.models import MODELS, list_models
        from autocomp.presets import list_presets, load_preset
        from autocomp.space import AUTO

        if args.what == "models":
            for name in list_models(args.pattern):
                print(f"{name:28s} {MODELS.help(name) if name in MODELS else ''}".rstrip())
        elif args.what == "datasets":
            for name in list_datasets(args.pattern):
                print(name)
        else:
            kind = "agent" if args.what == "agents" else "space"
            import fnmatch

            names = [name for name in list_presets(kind) if fnmatch.fnmatch(name, args.pattern)]
            width = max((len(name) for name in [*names, AUTO]), default=0) + 2
            if kind == "space" and fnmatch.fnmatch(AUTO, args.pattern):
                print(f"{AUTO:{width}s}The default: `transformer` for a model with attention blocks, else `prune`.")
            for name in names:
                print(f"{name:{width}s}{str(load_preset(kind, name).get('description', '')).strip()}")
        return 0


class SweepCommand:
    help = "run a grid of searches as Ray Tune trials (pip install 'autocomp[ray]')"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("sweep_file", help="YAML with name, base (search settings) and grid")
        p.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: a local Ray instance)")
        p.add_argument("--runs-dir", default="runs")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        sweep_dir = api.sweep(args.sweep_file, runs_dir=args.runs_dir, address=args.address)
        print((sweep_dir / "summary.md").read_text())
        print(f"sweep saved in {sweep_dir}/ (summary.md, summary.csv, accuracy_vs_budget.png)")
        return 0


class DashboardCommand:
    help = "open optuna-dashboard on a run (pip install 'autocomp[dashboard]')"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8080)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        RunDir(args.run_dir).read_config()  # a folder that is no run fails before the address is printed
        print(f"optuna-dashboard on {args.run_dir}: http://{args.host}:{args.port}/ (Ctrl-C stops it)")
        api.dashboard(args.run_dir, host=args.host, port=args.port)
        return 0


class ExportCommand:
    help = "export a run's best model (torchscript, pt2, onnx, state_dict or packed), measured where it runs"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir")
        p.add_argument("--format", default="torchscript", choices=["torchscript", "pt2", "onnx", "state_dict", "packed"])
        p.add_argument("--threads", type=int, default=1, help="threads for the latency measurement")
        p.add_argument("--latency-batch", type=int, default=32, help="the second batch size latency is measured at")
        p.add_argument("--no-accuracy", action="store_true", help="skip measuring test accuracy in the runtime")
        p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
        p.add_argument("--finetuned", action="store_true", help="export the weights written by `autocomp finetune`")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        if args.latency_batch < 1:
            raise ConfigError(f"--latency-batch {args.latency_batch} must be at least 1.")
        info = api.export(args.run_dir, fmt=args.format, threads=args.threads, out_dir=args.out, finetuned=args.finetuned,
                          latency_batch=args.latency_batch, accuracy=not args.no_accuracy)
        payload = f" (tensors {info['payload_bytes']:,} bytes)" if "payload_bytes" in info else ""
        accuracy = f", test acc {info['test_accuracy']:.4f} in the runtime" if "test_accuracy" in info else ""
        print(f"{info['file']}: {info['size_bytes']:,} bytes{payload}; {info['latency_s'] * 1e3:.3f} ms at batch 1 "
              f"({info['speedup']:.2f}x the original), {info['latency_batch_s'] * 1e3:.3f} ms at batch "
              f"{info['latency_batch']} ({info['speedup_batch']:.2f}x), {info['threads']} thread(s){accuracy}; "
              f"max |output - PyTorch| = {info['max_abs_diff']:.2e}{_of_largest(info)}")
        return 0


def _of_largest(info: dict[str, float]) -> str:
    """The export's largest output difference as a share of its largest output (float32 sums in
    another order differ more where outputs are large)."""
    largest = info.get("max_abs_output", 0.0)
    return f" ({info['max_abs_diff'] / largest:.2%} of the largest output, {largest:.3g})" if largest else ""


class FinetuneCommand:
    help = "fine-tune a run's best model with knowledge distillation from the original"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir")
        p.add_argument("--epochs", type=int, default=5)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--temperature", type=float, default=4.0)
        p.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation loss")
        p.add_argument("--no-kd", action="store_true", help="plain cross-entropy, no distillation")
        p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's --device)")
        p.add_argument("--no-progress", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        r = api.finetune(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         temperature=args.temperature, alpha=args.alpha, kd=not args.no_kd, progress=not args.no_progress,
                         device=args.device)
        print(finetune_lines(r, RunDir(args.run_dir).read_summary(), args.run_dir))
        return 0


class ReportCommand:
    help = "write report.html with plots of a finished run"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("run_dir")
        p.add_argument("--no-uniform", action="store_true", help="skip evaluating the uniform baseline")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        print(f"report written to {api.report(args.run_dir, uniform=not args.no_uniform)}")
        return 0


class InspectCommand:
    help = "show what autocomp sees in a model: layers, channel groups, costs, actions, what is left out"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        d = SearchConfig()
        p.add_argument("--model", default=d.model, help="registry name, torchvision:NAME or path/file.py:factory")
        p.add_argument("--space", default=d.space, help="preset from search_spaces/ or a .yaml file (default: auto: transformer for a model with attention blocks, else prune)")
        p.add_argument("--data", default=d.data, help="the data the model takes (for its input shape and classes)")
        p.add_argument("--data-dir", help="where cifar10 lives")
        p.add_argument("--image-size", type=int, help="resize ImageFolder images to N x N")
        p.add_argument("--input-shape", help="one sample's shape, e.g. 3,32,32 (skips loading the data)")
        p.add_argument("--num-classes", type=int, help="classes of the model's output (default: the data's)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import json

        from autocomp.api import inspect

        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise ConfigError(f"--input-shape {args.input_shape!r} is not a shape: write e.g. 3,32,32.") from None
        seen = inspect(model=args.model, space=args.space, input_shape=shape,
                       num_classes=args.num_classes or (10 if shape else None), data=args.data,
                       data_dir=args.data_dir, image_size=args.image_size)
        print(json.dumps(seen.to_dict(), indent=1) if args.json else seen.table())
        return 0


COMMANDS = {"search": SearchCommand, "sweep": SweepCommand, "dashboard": DashboardCommand,
            "finetune": FinetuneCommand, "export": ExportCommand, "report": ReportCommand, "list": ListCommand,
            "inspect": InspectCommand}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocomp", description="Search compression plans for PyTorch models under a budget.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        command.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except AutocompError as exc:
        if args.debug:
            raise
        print(f"autocomp: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence for users
        if args.debug:
            raise
        print(f"autocomp: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
