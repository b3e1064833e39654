"""Run settings: one YAML file per dataset and per algorithm under ``config/``, merged and checked.

A run's settings are ``defaults <- config/datasets/<dataset>.yaml <- config/algorithms/<algorithm>.yaml
(its ``by_family`` entry for the dataset's family, if any) <- --set overrides``.  Every key must be
known and of the right type; anything else is a :class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

HYPERPARAMETERS = ("lr", "weight_decay", "momentum")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of its allowed values."""


_OPT_INT = (int, type(None))
_OPT_FLOAT = (float, int, type(None))

# key: (allowed types, default, allowed values or None, what it means)
SETTINGS: dict[str, tuple[tuple, Any, tuple | None, str]] = {
    "label": ((str,), "", None, "the algorithm's label in tables and figures"),
    "family": ((str,), "uci", ("uci", "fashion_mnist", "penn_treebank", "cifar10"), "dataset family"),
    "model": ((str,), "mlp", ("mlp", "mlp_bn", "lstm", "resnet18"), "network architecture"),
    "hidden_units": ((int,), 50, None, "MLP hidden width or LSTM units"),
    "embedding_dim": ((int,), 650, None, "LSTM token embedding size"),
    "lstm_layers": ((int,), 2, None, "number of LSTM layers"),
    "batch_size": (_OPT_INT, None, None, "training batch size (null: full batch); LSTM: parallel sequences"),
    "bptt": ((int,), 70, None, "LSTM backpropagation-through-time length"),
    "eval_batch_size": ((int,), 10000, None, "batch size for full-split evaluation"),
    "update_interval": ((int,), 10, None, "T: weight steps per hyperparameter step"),
    "hyperparameter_steps": ((int,), 400, None, "number of hyperparameter steps (each T weight steps)"),
    "train_on": ((str,), "train", ("train", "train+valid"), "which split(s) the weights are trained on"),
    "hypergradient": ((str,), "none", ("none", "neumann", "baydin", "unroll"), "hypergradient method"),
    "optimise": ((list,), [], None, "hyperparameters optimised: subset of lr, weight_decay, momentum"),
    "lr_per_weight": ((bool,), False, None, "one learning rate per weight element (HD learning rates)"),
    "neumann_terms": ((int,), 5, None, "i: terms of the truncated Neumann series"),
    "unroll_steps": ((int,), 5, None, "weight steps differentiated through (unroll)"),
    "reset_weights": ((bool,), False, None, "unroll: reset weights to their initial values every hyperstep"),
    "hyper_optimiser": ((str,), "adam", ("adam", "sgd"), "optimiser of the unconstrained hyperparameters"),
    "hyper_lr": ((float, int), 0.05, None, "learning rate of the hyperparameter optimiser"),
    "lr_step_factor": (_OPT_FLOAT, None, None, "Random_SteppedLR: lr multiplied by this every T steps"),
    "log10_lr_min": ((float, int), -10.0, None, "log10(lr) is clipped below at this value"),
    "log10_lr_max": ((float, int), 0.0, None, "log10(lr) is clipped above at this value"),
    "clip_grad_norm": (_OPT_FLOAT, None, None, "clip the training gradient to this global norm"),
    "divergence_threshold": ((float, int), 1e3, None, "training loss above this marks the run diverged"),
    "weight_steps": (_OPT_INT, None, None, "total weight steps; when set, it fixes hyperparameter_steps to "
                     "ceil(weight_steps / update_interval), so one budget fits every algorithm"),
    "log_every": ((int,), 100, None, "weight steps between logged evaluations (taken at the end of the "
                  "hyperparameter step that reaches them, so every algorithm logs at comparable steps)"),
    "checkpoint_every": ((int,), 50, None, "hyperparameter steps between checkpoints"),
    # black-box searches (python -m onepass.search): each evaluation / trial is a run of search_inner_algorithm
    "search": ((str,), "none", ("none", "bayesopt", "asha", "pbt"), "black-box search around the runs"),
    "search_inner_algorithm": ((str,), "Random_Validation", None, "search: algorithm config of every trial"),
    "search_log10_lr": ((list,), [-6.0, -1.0], None, "search space: [low, high] of log10(lr)"),
    "search_log10_weight_decay": ((list,), [-7.0, -2.0], None, "search space: [low, high] of log10(wd)"),
    "search_momentum": ((list,), [0.0, 1.0], None, "search space: [low, high] of momentum"),
    "search_diverged_penalty": ((float, int), 10.0, None, "search: validation loss scored for a diverged trial"),
    "search_initial_points": ((int,), 5, None, "BayesOpt: random initial evaluations"),
    "search_guided_points": ((int,), 25, None, "BayesOpt: evaluations guided by the surrogate"),
    "search_trials": ((int,), 32, None, "ASHA: trials sampled; PBT: population size"),
    "search_report_every": ((int,), 1, None, "ASHA/PBT: hyperparameter steps between reported evaluations"),
    "asha_grace_period": ((int,), 10, None, "ASHA: hyperparameter steps before a trial may be stopped"),
    "asha_reduction_factor": ((float, int), 3, None, "ASHA: reduction factor between rungs"),
    "pbt_perturbation_interval": ((int,), 20, None, "PBT: hyperparameter steps between exploit/explore"),
    "pbt_quantile_fraction": ((float, int), 0.25, None, "PBT: bottom fraction replaced by copies of the top"),
    "pbt_resample_probability": ((float, int), 0.25, None, "PBT: probability of resampling a hyperparameter"),
    "pbt_perturbation_factors": ((list,), [1.2, 0.8], None, "PBT: factors a hyperparameter is multiplied by"),
}


def config_dir() -> Path:
    """The ``config/`` directory: ``$ONEPASS_CONFIG_DIR`` or the one beside the package."""
    env = os.environ.get("ONEPASS_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "config"


def known(kind: str, directory: Path | None = None) -> list[str]:
    """Names of the configured datasets (``kind='datasets'``) or algorithms."""
    return sorted(p.stem for p in ((directory or config_dir()) / kind).glob("*.yaml"))


def search_kind(algorithm: str, directory: Path | None = None) -> str:
    """The algorithm's ``search`` setting: ``none``, or bayesopt / asha / pbt for a black-box search
    run by ``python -m onepass.search`` (``none`` for an unknown algorithm)."""
    path = (directory or config_dir()) / "algorithms" / f"{algorithm}.yaml"
    return _read_yaml(path).get("search", "none") if path.exists() else "none"


def is_search(algorithm: str, directory: Path | None = None) -> bool:
    """Whether ``algorithm`` is run by ``python -m onepass.search`` rather than ``onepass.train``."""
    return search_kind(algorithm, directory) != "none"


def check(settings: dict, source: str) -> dict:
    """Check every key and type of ``settings``; ``source`` names where they came from."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting {key!r} in {source}; known settings: {', '.join(SETTINGS)}")
        types, _, choices, _ = SETTINGS[key]
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"setting {key!r} in {source} must be {names}, got {value!r}")
        if choices is not None and value not in choices:
            raise ConfigError(f"setting {key!r} in {source} must be one of {choices}, got {value!r}")
    for name in settings.get("optimise", []):
        if name not in HYPERPARAMETERS:
            raise ConfigError(f"setting 'optimise' in {source}: unknown hyperparameter {name!r}; "
                              f"known: {', '.join(HYPERPARAMETERS)}")
    return settings


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return data


def parse_overrides(pairs: list[str]) -> dict:
    """Parse ``key=value`` strings; values are read as YAML (``1e-3``, ``true``, ``[lr]``)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        value = yaml.safe_load(raw)
        if isinstance(value, str) and key in SETTINGS and float in SETTINGS[key][0]:
            try:  # YAML reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def load_settings(dataset: str, algorithm: str, overrides: list[str] | dict | None = None,
                  directory: Path | None = None) -> dict:
    """Merged, checked settings of one run."""
    directory = directory or config_dir()
    ds_path = directory / "datasets" / f"{dataset}.yaml"
    alg_path = directory / "algorithms" / f"{algorithm}.yaml"
    if not ds_path.exists():
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(known('datasets', directory))}")
    if not alg_path.exists():
        raise ConfigError(f"unknown algorithm {algorithm!r}; known: {', '.join(known('algorithms', directory))}")
    settings = {key: spec[1] for key, spec in SETTINGS.items()}
    settings.update(check(_read_yaml(ds_path), str(ds_path)))
    alg = _read_yaml(alg_path)
    by_family = alg.pop("by_family", {}) or {}
    settings.update(check(alg, str(alg_path)))
    family = settings["family"]
    if family in by_family:
        settings.update(check(by_family[family], f"{alg_path} (by_family.{family})"))
    if isinstance(overrides, dict):
        extra = overrides
    else:
        extra = parse_overrides(list(overrides or []))
    settings.update(check(extra, "--set"))
    if settings["log10_lr_min"] > settings["log10_lr_max"]:
        raise ConfigError("setting 'log10_lr_min' must not exceed 'log10_lr_max'")
    if settings["weight_steps"] is not None:
        if settings["weight_steps"] < 1:
            raise ConfigError(f"setting 'weight_steps' must be at least 1, got {settings['weight_steps']}")
        settings["hyperparameter_steps"] = -(-settings["weight_steps"] // settings["update_interval"])
    for key in ("update_interval", "hyperparameter_steps", "neumann_terms", "unroll_steps",
                "log_every", "checkpoint_every"):
        if settings[key] < 1:
            raise ConfigError(f"setting {key!r} must be at least 1, got {settings[key]}")
    if settings["hypergradient"] == "unroll" and settings["unroll_steps"] > settings["update_interval"]:
        raise ConfigError("setting 'unroll_steps' must not exceed 'update_interval'")
    if settings["hypergradient"] == "baydin" and settings["update_interval"] != 1:
        raise ConfigError("setting 'update_interval' must be 1 for the baydin hypergradient")
    return settings
