"""A dataset of one's own: the user's functions that a dataset YAML names as ``module:function``.

    # my_catalog/datasets/my_problem.yaml
    label: My problem
    task: regression              # or classification (the loss: MSE or cross-entropy)
    metric: test MSE
    data: my_problem:splits       # returns (train, validation, test), each (inputs, targets)
    model: my_problem:network     # returns an nn.Module (default: the built-in MLP of `hidden_units`)
    path: ..                      # where my_problem.py lives, relative to this file (default: its directory)
    settings: {batch_size: 32, update_interval: 10, weight_steps: 2000}

``data`` is called with no arguments when the dataset is prepared (``python -m onepass.data prepare``) and
returns the three splits as ``(train, validation, test)`` (or a mapping with those keys, ``valid`` for
validation), each ``(inputs, targets)`` of tensors or arrays, or an iterable of such batches (a
``DataLoader``), which is concatenated. Regression targets are real (``[n]`` becomes ``[n, 1]``);
classification targets are class indices ``0..C-1``. The splits are stored in the prepared file as given (no
normalisation; the table metric is the test loss in the targets' own units). ``model`` is called with no
arguments for every member (after ``torch.manual_seed(seed)``, so a seed fixes its initialisation). Every
error names the YAML file, the key and the function.
"""

from __future__ import annotations

import importlib
import sys

import torch
from torch import nn

from . import catalog

SPLIT_NAMES = ("train", "valid", "test")


class UserCodeError(ValueError):
    """A user's function cannot be imported, fails, or returns something other than what its key needs."""


def activate(entry: catalog.Dataset) -> None:
    """Put the directory of a user dataset's modules (its ``path``) first on ``sys.path``."""
    if entry.path and entry.path not in sys.path:
        sys.path.insert(0, entry.path)


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def function(spec: str, where: str, root: str | None = None):
    """The callable ``module:function`` names; ``where`` ("<file>: key 'data'") starts every error, which
    names ``root`` (the dataset's ``path``) as where the module was looked for."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module's own error while it is imported
        looked = f"; looked in {root} (key 'path') and on sys.path" if root else ""
        raise UserCodeError(f"{where}: cannot import module {module_name!r} of {spec} ({_one_line(err)}"
                            f"{looked})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserCodeError(f"{where}: module {module_name!r} has no function {name!r} ({spec})")
    return fn


def check(entry: catalog.Dataset) -> None:
    """Import the functions a user dataset names (without calling them): a UserCodeError names the first that
    cannot be found. Run by the study config's check, so that a bad name fails a dry run."""
    activate(entry)
    function(entry.function, f"{entry.file}: key 'data'", entry.path)
    model = entry.settings.get("model", "")
    if catalog.FUNCTION.match(model):
        function(model, f"{entry.file}: key 'model'", entry.path)


def _tensor(value, where: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except Exception as err:
        raise UserCodeError(f"{where}: not a tensor or an array ({_one_line(err)})") from None


def _split(value, task: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (float32 inputs, targets): float32 [n, k] for regression, int64 [n] for classification."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], (tuple, list)):
        inputs, targets = _tensor(value[0], where), _tensor(value[1], where)
    else:
        try:
            batches = [(_tensor(x, where), _tensor(y, where)) for x, y in value]
        except (TypeError, ValueError):
            raise UserCodeError(f"{where}: expected (inputs, targets) or an iterable of (inputs, targets) "
                                f"batches, got {type(value).__name__}") from None
        if not batches:
            raise UserCodeError(f"{where}: no batches")
        inputs, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if inputs.dim() < 1 or len(inputs) == 0 or len(inputs) != len(targets):
        raise UserCodeError(f"{where}: inputs and targets must have the same, non-zero number of rows, got "
                            f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    inputs = inputs.to(torch.float32)
    if task == "regression":
        targets = targets.to(torch.float32)
        targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
        if targets.dim() != 2:
            raise UserCodeError(f"{where}: regression targets must be [n] or [n, outputs], got "
                                f"{tuple(targets.shape)}")
    else:
        if targets.dim() != 1 or targets.is_floating_point() and not bool((targets == targets.round()).all()):
            raise UserCodeError(f"{where}: classification targets must be class indices of shape [n], got "
                                f"{targets.dtype} {tuple(targets.shape)}")
        targets = targets.to(torch.int64)
        if bool((targets < 0).any()):
            raise UserCodeError(f"{where}: classification targets must be class indices >= 0")
    if not bool(torch.isfinite(inputs).all()) or not bool(torch.isfinite(targets.to(torch.float32)).all()):
        raise UserCodeError(f"{where}: inputs and targets must be finite")
    return inputs, targets


def splits(entry: catalog.Dataset) -> dict:
    """Call a user dataset's ``data`` function and check what it returns: {split: (inputs, targets)}."""
    activate(entry)
    where = f"{entry.file}: key 'data' ({entry.function})"
    fn = function(entry.function, f"{entry.file}: key 'data'", entry.path)
    try:
        value = fn()
    except Exception as err:
        raise UserCodeError(f"{where} failed: {_one_line(err)}") from None
    if isinstance(value, dict):
        value = {("valid" if k == "validation" else k): v for k, v in value.items()}
        if set(value) != set(SPLIT_NAMES):
            raise UserCodeError(f"{where} must return the keys train, valid, test, got {sorted(value)}")
        value = [value[s] for s in SPLIT_NAMES]
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise UserCodeError(f"{where} must return (train, validation, test), got {type(value).__name__}"
                            f"{' of ' + str(len(value)) if isinstance(value, (tuple, list)) else ''}")
    out = {s: _split(v, entry.task, f"{where} returned a {s} split that is wrong") for s, v in zip(SPLIT_NAMES, value)}
    shapes = {tuple(x.shape[1:]) for x, _ in out.values()}
    outputs = {y.shape[1] for _, y in out.values()} if entry.task == "regression" else {0}
    if len(shapes) != 1 or len(outputs) != 1:
        raise UserCodeError(f"{where} returned splits whose inputs or targets differ in shape: "
                            f"{[tuple(x.shape) for x, _ in out.values()]}")
    return out


def prepared(entry: catalog.Dataset) -> dict:
    """What ``onepass.data.prepare`` stores for a user dataset: its splits, input shape and classes."""
    content = splits(entry)
    num_classes = None
    if entry.task == "classification":
        num_classes = int(max(int(y.max()) for _, y in content.values())) + 1
        num_classes = max(num_classes, int(entry.shape.get("outputs", 0)))
    return {"user_splits": content, "input_shape": list(content["train"][0].shape[1:]),
            "num_classes": num_classes, "inputs_encoding": "float32"}


def _model_source(spec: str) -> tuple[str, str | None]:
    """Where a model function is named (the dataset YAML that names it, else the run setting) and the
    directory of its module (that dataset's ``path``, put on sys.path)."""
    for entry in catalog.datasets().values():
        if entry.settings.get("model") == spec:
            activate(entry)
            return f"{entry.file}: key 'model'", entry.path
    return "setting 'model'", None


def build_model(spec: str) -> nn.Module:
    """A fresh network from the user's ``module:function`` (called with no arguments)."""
    where, root = _model_source(spec)
    fn = function(spec, where, root)
    try:
        model = fn()
    except Exception as err:
        raise UserCodeError(f"{where} ({spec}) failed: {_one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserCodeError(f"{where} ({spec}) must return a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise UserCodeError(f"{where} ({spec}) returned a network without parameters")
    return model


def batchable(model: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether ``torch.func`` can train a population of this network at once: ``vmap`` over
    ``functional_call`` runs on two stacked copies of its weights and gives each copy's own output. (Not, for
    example, with dropout or data-dependent control flow; those populations train one member at a time.)"""
    from torch.func import functional_call, vmap

    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    stacked = {k: torch.stack([v.detach(), v.detach()]) for k, v in state.items()}
    single = {k: v.detach().clone() for k, v in state.items()}
    x = inputs[:2]
    try:
        with torch.no_grad():
            batched = vmap(lambda s, x: functional_call(model, s, (x,)), in_dims=(0, None))(stacked, x)
            alone = functional_call(model, single, (x,))
        return bool(torch.allclose(batched[0], alone, rtol=1e-4, atol=1e-6)
                    and torch.allclose(batched[1], alone, rtol=1e-4, atol=1e-6))
    except Exception:  # noqa: BLE001 - any failure of vmap means: one member at a time
        return False
