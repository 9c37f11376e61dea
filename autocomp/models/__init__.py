"""Model registry: built-ins, ``torchvision:NAME`` and a user's ``path/to/file.py:factory``.

Example:
    >>> from autocomp.models import build_model
    >>> model = build_model("digits_cnn", num_classes=10)
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from autocomp.errors import ConfigError, IncompatibleModelError, UnknownNameError
from autocomp.models import builtin
from autocomp.models.attention import split_saved_keys, unfuse_attention
from autocomp.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("digits_cnn")(builtin.digits_cnn)
MODELS.register("resnet20")(builtin.resnet20)
MODELS.register("resnet56")(builtin.resnet56)

TORCHVISION_EXAMPLES = ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:<any name>"]


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern) + [n for n in TORCHVISION_EXAMPLES if pattern == "*"]


def _call_factory(factory: Callable[..., nn.Module], num_classes: int | None) -> nn.Module:
    params = inspect.signature(factory).parameters
    if num_classes is not None and "num_classes" in params:
        return factory(num_classes=num_classes)
    return factory()


def _from_file(spec: str, num_classes: int | None) -> nn.Module:
    path_text, _, factory_name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist: pass --model path/to/file.py:factory with an existing file.")
    module_name = f"autocomp_user_model_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UnknownNameError(
            f"{path} has no callable `{factory_name}`: pass --model {path}:NAME with NAME one of {names}."
        )
    return _call_factory(factory, num_classes)


def _from_torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean `torchvision:{close[0]}`?" if close else ""
        raise UnknownNameError(f"unknown torchvision model `{name}`.{hint}")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


def build_model(spec: str, *, num_classes: int | None = None) -> nn.Module:
    """Build an untrained model from a registry name, ``torchvision:NAME`` or ``file.py:factory``,
    with every ``nn.MultiheadAttention`` unfused (:mod:`autocomp.models.attention`)."""
    if spec.startswith("torchvision:"):
        model = _from_torchvision(spec.split(":", 1)[1], num_classes)
    elif ".py:" in spec:
        model = _from_file(spec, num_classes)
    else:
        model = _call_factory(MODELS.get(spec), num_classes)
    return unfuse_attention(model)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model``, failing with one clear line when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist: pass --weights with the path of a saved state_dict.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same advice
        raise IncompatibleModelError(
            f"weights file {path} is not a readable state_dict ({type(exc).__name__}): "
            "save it with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise IncompatibleModelError(f"weights file {path} holds a {type(state).__name__}, not a state_dict.")
    # module versions (``state_dict()._metadata``) travel with the keys: some modules check them on load
    metadata = {"" if k == "module" else k.removeprefix("module."): v  # nn.DataParallel's root is "module"
                for k, v in getattr(state, "_metadata", {}).items()}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = split_saved_keys(model, state)  # saved from the model before its attention was unfused
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise IncompatibleModelError(
            f"weights {path} do not fit the model: {', '.join(parts)} keys. "
            "Pass the --model these weights were saved from (and --num-classes if it differs)."
        )
    state = OrderedDict(state)
    state._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    model.load_state_dict(state)
