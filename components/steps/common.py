"""What every step shares: configs that round-trip through dicts, atomic JSON, the device, progress lines."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import torch

from components.steps.data import IngestedData
from model.trainer import default_device

DEVICES = ("auto", "cpu", "cuda")


class StepConfig:
    """Mixin for a step's frozen dataclass config: `to_dict` gives JSON-ready values, `from_dict` builds one
    back, nested configs included, and names the field at fault on an unknown field or a wrong type."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any) -> typing.Self:
        return config_from_dict(cls, data, cls.__name__)


def config_from_dict(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from `data`; missing fields take their defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {names}")
    return cls(**{name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a kill mid-write keeps the previous file)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    return path


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when present, else the CPU; `cuda:N` picks a GPU."""
    if name == "auto":
        return default_device()
    if name.split(":")[0] not in DEVICES[1:]:
        raise ValueError(f"device: one of {list(DEVICES)} or cuda:N, got {name!r}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: one of {list(DEVICES)} or cuda:N, got {name!r}") from None


def training_device(gpus: int) -> torch.device:
    """The device of a pipeline step that was given `gpus` GPUs: the CPU for 0 (even where a GPU is present, so
    that `gpus: 0` means what it says on a GPU workstation too), else the CUDA device, which must exist."""
    check_gpus(gpus)
    if gpus == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"gpus={gpus}, but this step sees no CUDA device: on a cluster, is the node pool's GPU resource "
            f"nvidia.com/gpu and the image the cuda one? Locally, run with gpus 0"
        )
    return torch.device("cuda")


def check_gpus(gpus: int) -> None:
    if gpus not in (0, 1) or isinstance(gpus, bool):
        raise ValueError(f"gpus: 0 (the CPU) or 1 (a training step runs on one GPU), got {gpus!r}")


def steps_for(data: IngestedData, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(data.rows("train") * epochs / batch_size))


def architecture_progress(name: str):
    """A `report(done, total)` of architectures evaluated, about twenty lines over a long loop."""

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            print(f"{name}: {done}/{total} architectures evaluated", flush=True)

    return report
