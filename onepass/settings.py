"""Run settings: the settings table, and one run's settings merged from the catalogue and checked.

A run's settings are ``defaults <- config/datasets/<dataset>.yaml (settings) <- config/algorithms/<algorithm>.yaml
(settings, then its ``by_family`` entry for the dataset's family) <- --set overrides``.  Every key must be
known, of the right type and inside its domain; anything else is a :class:`ConfigError` naming the key and
where it came from.  The study config (config/config.yaml) is checked by :mod:`onepass.study`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from . import catalog

HYPERPARAMETERS = ("lr", "weight_decay", "momentum")  # the weight-update hyperparameters, in this order


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of its allowed values."""


def initial_domain(name: str) -> str:
    """The domain of an initial hyperparameter, in words: lr and weight decay a finite value >= 0, momentum
    also <= 1. (A sampler's own constraints, such as a log scale's positive range, are the sampler's.)"""
    return "a finite value >= 0" + (" and <= 1" if name == "momentum" else "")


def check_initial(name: str, value, label: str | None = None) -> float:
    """``value`` as a float if it lies in the domain of the initial hyperparameter ``name`` (one of
    :data:`HYPERPARAMETERS`, :func:`initial_domain`), else a ConfigError "<label> must be <domain>, got
    <value>" (``label`` default: ``initial <name>``)."""
    if name not in HYPERPARAMETERS:
        raise ConfigError(f"unknown hyperparameter {name!r}; known: {', '.join(HYPERPARAMETERS)}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (name == "momentum" and value > 1):
        raise ConfigError(f"{label or 'initial ' + name} must be {initial_domain(name)}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Setting:
    """One run setting: its types, default, meaning and domain."""

    types: tuple
    default: Any
    doc: str
    choices: tuple | None = None
    minimum: float | None = None       # value >= minimum
    positive: bool = False             # value > 0
    pair: bool = False                 # a [low, high] list with low < high


INT, OPT_INT = (int,), (int, type(None))
FLOAT, OPT_FLOAT = (float, int), (float, int, type(None))

SETTINGS: dict[str, Setting] = {
    "family": Setting((str,), "uci", "dataset family (set from the dataset's catalogue entry)", catalog.FAMILIES),
    "preprocessing": Setting((str,), "paper", "splits and input normalisation: as the paper's code, or "
                             "corrected (see the README's list of differences)", ("paper", "corrected")),
    "model": Setting((str,), "mlp", "network architecture, or a user's function returning an nn.Module as "
                     "module:function (a dataset YAML's top-level key model)", ("mlp", "mlp_bn", "lstm", "resnet18")),
    "hidden_units": Setting(INT, 50, "MLP hidden width or LSTM units", minimum=1),
    "embedding_dim": Setting(INT, 650, "LSTM token embedding size", minimum=1),
    "lstm_layers": Setting(INT, 2, "number of LSTM layers", minimum=1),
    "batch_size": Setting(OPT_INT, None, "training batch size (null: full batch); LSTM: parallel sequences",
                          minimum=1),
    "bptt": Setting(INT, 70, "LSTM backpropagation-through-time length", minimum=1),
    "eval_batch_size": Setting(INT, 10000, "batch size for full-split evaluation", minimum=1),
    "update_interval": Setting(INT, 10, "T: weight steps per hyperparameter step", minimum=1),
    "hyperparameter_steps": Setting(INT, 400, "number of hyperparameter steps (each T weight steps)", minimum=1),
    "train_on": Setting((str,), "train", "which split(s) the weights are trained on", ("train", "train+valid")),
    "validation_proportion": Setting(OPT_FLOAT, None, "the training and validation rows re-cut so that this "
                                     "fraction of them (rounded to the nearest row, as numpy's rint) is the "
                                     "validation split, the first rows training, as the paper's "
                                     "--validation_proportion (null: the dataset's own splits)", positive=True),
    "hypergradient": Setting((str,), "none", "hypergradient method", ("none", "neumann", "baydin", "unroll")),
    "optimise": Setting((list,), [], "hyperparameters optimised: a subset of lr, weight_decay, momentum"),
    "lr_per_weight": Setting((bool,), False, "one learning rate per weight element (HD learning rates)"),
    "neumann_terms": Setting(INT, 5, "i: terms of the truncated Neumann series", minimum=1),
    "unroll_steps": Setting(INT, 5, "weight steps differentiated through (unroll)", minimum=1),
    "reset_weights": Setting((bool,), False, "unroll: reset the weights to their initial values every "
                             "hyperparameter step"),
    "reset_momentum": Setting((bool,), False, "unroll with reset_weights: also zero the momentum buffers at a "
                              "reset (the paper's code carries them over)"),
    "hyper_optimiser": Setting((str,), "adam", "optimiser of the unconstrained hyperparameters", ("adam", "sgd")),
    "hyper_lr": Setting(FLOAT, 0.05, "learning rate of the hyperparameter optimiser", positive=True),
    "lr_step_factor": Setting(OPT_FLOAT, None, "Random_SteppedLR: lr multiplied by this every T steps",
                              positive=True),
    "log10_lr_min": Setting(FLOAT, -10.0, "log10(lr) is clipped below at this value"),
    "log10_lr_max": Setting(FLOAT, 0.0, "log10(lr) is clipped above at this value"),
    "clip_grad_norm": Setting(OPT_FLOAT, None, "clip the training gradient to this global norm", positive=True),
    "baydin_clipped_gradients": Setting((bool,), False, "baydin: its hypergradient from the clipped training "
                                        "gradients (default: unclipped, as the paper's code; the step is clipped)"),
    "baydin_new_gradient": Setting((str,), "next_batch", "baydin: the newer gradient of its hypergradient: "
                                   "next_batch (the next step's, on the next training batch) or same_batch (after "
                                   "the step, on the same batch: the paper's on Penn Treebank, whose validation "
                                   "loader walked the training data in lockstep, train.py:207-208, 531-536)",
                                   ("next_batch", "same_batch")),
    "batchnorm_absorbs": Setting((str,), "validation", "BatchNorm models: the extra batch the running statistics "
                                 "absorb (a train-mode forward pass) after every weight step, as the paper's code, "
                                 "which computed its validation loss in train mode on its validation loader "
                                 "(train.py:189-208, 576-582): validation (one validation batch), training (another "
                                 "training batch: Baydin, whose validation loader was the training data) or none "
                                 "(Random and Random (xLR), which computed no validation loss)",
                                 ("validation", "training", "none")),
    "divergence_threshold": Setting(OPT_FLOAT, None, "training loss above this marks the run diverged (null: only "
                                    "a NaN/inf loss does, as the paper's code for UCI)", positive=True),
    "divergence_check": Setting((str,), "training", "where divergence_threshold applies: training (the run is "
                                "frozen once its training loss passes it) or post_hoc (the run trains to the end; "
                                "the loss tables and figures leave out a run whose final test metric reaches it, "
                                "the paper's Fashion-MNIST rule, paper_plots.py:54-76, figures.py:525-526)",
                                ("training", "post_hoc")),
    "weight_steps": Setting(OPT_INT, None, "total weight steps; when set, it fixes hyperparameter_steps to "
                            "ceil(weight_steps / update_interval), so one budget fits every algorithm", minimum=1),
    "log_every": Setting(INT, 100, "weight steps between logged evaluations (taken at the end of the "
                         "hyperparameter step that reaches them, so every algorithm logs at comparable steps)",
                         minimum=1),
    "track_min_test": Setting((bool,), False, "evaluate the test metric at the start and after every weight "
                              "step and record its running minimum (min_test_metric in metrics.json): the "
                              "paper's BayesOpt statistic, set for BayesOpt's evaluations"),
    "checkpoint_every": Setting(INT, 50, "hyperparameter steps between checkpoints", minimum=1),
    "keep_checkpoint": Setting((bool,), False, "keep the checkpoint of a finished run (default: deleted)"),
    # black-box searches (python -m onepass.search): each evaluation / trial is a run of search_inner_algorithm
    "search_inner_algorithm": Setting((str,), "Random_Validation", "search: algorithm of every trial"),
    "search_log10_lr": Setting((list,), [-6.0, -1.0], "search space: [low, high] of log10(lr)", pair=True),
    "search_log10_weight_decay": Setting((list,), [-7.0, -2.0], "search space: [low, high] of log10(weight decay)",
                                         pair=True),
    "search_momentum": Setting((list,), [0.0, 1.0], "search space: [low, high] of momentum, within [0, 1]",
                               pair=True),
    "search_diverged_penalty": Setting(FLOAT, 10.0, "search: validation loss scored for a diverged trial"),
    "search_initial_points": Setting(INT, 5, "BayesOpt: random initial evaluations", minimum=1),
    "search_guided_points": Setting(INT, 25, "BayesOpt: evaluations guided by the surrogate", minimum=0),
    "bayesopt_acquisition": Setting((str,), "LCB", "BayesOpt: acquisition function (LCB: the paper's UCB on "
                                    "the negated loss; gp_hedge: scikit-optimize's default)",
                                    ("LCB", "gp_hedge", "EI", "PI")),
    "bayesopt_kappa": Setting(FLOAT, 2.576, "BayesOpt: kappa of LCB (the paper's bayes_opt default 2.576; "
                              "scikit-optimize's default is 1.96)", positive=True),
    "bayesopt_surrogate": Setting((str,), "matern52", "BayesOpt: Gaussian process of the surrogate: matern52 "
                                  "(Matern nu=2.5, alpha 1e-6, normalised scores, 5 optimiser restarts: the "
                                  "paper's bayes_opt) or skopt (scikit-optimize's default GP)",
                                  ("matern52", "skopt")),
    "bayesopt_diverged_penalty": Setting(OPT_FLOAT, None, "BayesOpt: validation loss told for a diverged "
                                         "evaluation (null: search_diverged_penalty); the dataset YAMLs set the "
                                         "paper's per-dataset values"),
    "search_trials": Setting(INT, 32, "ASHA: trials sampled; PBT: population size", minimum=1),
    "search_time_unit": Setting((str,), "weight_steps", "ASHA/PBT: unit of the scheduler's time and of "
                                "search_report_every, asha_grace_period and pbt_perturbation_interval: "
                                "weight_steps (the paper: a report after every weight step) or hyper_steps",
                                ("weight_steps", "hyper_steps")),
    "search_report_every": Setting(INT, 1, "ASHA/PBT: time units (search_time_unit) between reports",
                                   minimum=1),
    "asha_grace_period": Setting(INT, 1, "ASHA: time units (search_time_unit) before a trial may be stopped "
                                 "(Ray's default 1)", minimum=1),
    "asha_reduction_factor": Setting(FLOAT, 4, "ASHA: reduction factor between rungs (Ray's default 4)",
                                     positive=True),
    "pbt_perturbation_interval": Setting(INT, 100, "PBT: time units (search_time_unit) between exploit/explore",
                                         minimum=1),
    "pbt_quantile_fraction": Setting(FLOAT, 0.25, "PBT: bottom fraction replaced by copies of the top",
                                     positive=True),
    "pbt_resample_probability": Setting(FLOAT, 0.25, "PBT: probability of resampling a hyperparameter",
                                        minimum=0),
    "pbt_perturbation_factors": Setting((list,), [1.2, 0.8], "PBT: factors a hyperparameter is multiplied by"),
    "pbt_perturb_space": Setting((str,), "log10", "PBT: lr and weight decay perturbed by multiplying their "
                                 "log10 (the paper) or their natural value", ("log10", "natural")),
    "pbt_synch": Setting((bool,), False, "PBT: synchronous generations (Ray's synch=True); the paper's is "
                         "asynchronous"),
}

# Settings that change how a run is kept, not what it computes: left out of a run's identity.
BOOKKEEPING = frozenset({"checkpoint_every", "keep_checkpoint"})


def identity(settings: dict) -> dict:
    """The settings that determine a run's results (all but :data:`BOOKKEEPING`)."""
    return {k: v for k, v in settings.items() if k not in BOOKKEEPING}


def _type_names(types: tuple) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list",
             type(None): "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types if not (t is int and float in types)))


def coerce(key: str, value):
    """``value`` of setting ``key`` with a number written as text (YAML reads ``1e-6`` as a string) made
    a number; anything else unchanged."""
    spec = SETTINGS.get(key)
    if spec is not None and isinstance(value, str) and float in spec.types:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_value(key: str, value, source: str):
    """``value`` of setting ``key`` coerced (see :func:`coerce`), or a ConfigError naming the key and, when
    given, its ``source``."""
    at = f" in {source}" if source else ""
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting {key!r}{at}; known settings: {', '.join(SETTINGS)}")
    spec = SETTINGS[key]
    value = coerce(key, value)
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise ConfigError(f"setting {key!r}{at} must be {_type_names(spec.types)}, got {value!r}")
    if value is None:
        return value
    if spec.choices is not None and value not in spec.choices and not (key == "model"
                                                                     and catalog.FUNCTION.match(value)):
        more = " or a user's function as module:function" if key == "model" else ""
        raise ConfigError(f"setting {key!r}{at} must be one of {', '.join(spec.choices)}{more}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"setting {key!r}{at} must be finite, got {value!r}")
        if spec.minimum is not None and value < spec.minimum:
            raise ConfigError(f"setting {key!r}{at} must be at least {spec.minimum}, got {value!r}")
        if spec.positive and value <= 0:
            raise ConfigError(f"setting {key!r}{at} must be greater than 0, got {value!r}")
    if spec.pair:
        value = [coerce_number(v) for v in value]
        if (len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not value[0] < value[1]):
            raise ConfigError(f"setting {key!r}{at} must be [low, high] with low < high, got {value!r}")
    if key == "optimise":
        for name in value:
            if name not in HYPERPARAMETERS:
                raise ConfigError(f"setting 'optimise'{at}: unknown hyperparameter {name!r}; "
                                  f"known: {', '.join(HYPERPARAMETERS)}")
    if key == "search_momentum" and not (0.0 <= value[0] and value[1] <= 1.0):
        raise ConfigError(f"setting 'search_momentum'{at} must lie within [0, 1], got {value!r}")
    if key == "pbt_perturbation_factors" and (not value or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in value)):
        raise ConfigError(f"setting 'pbt_perturbation_factors'{at} must be positive numbers, got {value!r}")
    return value


_TRUE, _FALSE, _NULL = ("true", "True", "TRUE"), ("false", "False", "FALSE"), ("null", "Null", "NULL", "~")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_REAL = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def read_as(types: tuple, text):
    """``text`` read as a value of one of ``types`` (int, float, bool, None) where it spells one as YAML does
    (``2000``, ``1e-3``, ``true``, ``null``); an integer stays an integer where ``int`` is among the types, as in
    a YAML file. Text that spells none of them, text where ``str`` is among the types, and anything that is
    not text are returned unchanged, for the checks to judge."""
    if not isinstance(text, str) or str in types:
        return text
    if bool in types and text in _TRUE + _FALSE:
        return text in _TRUE
    if type(None) in types and text in _NULL:
        return None
    if int in types and _INTEGER.fullmatch(text):
        return int(text)
    if float in types and _REAL.fullmatch(text):
        return float(text)
    return text


def from_text(key: str, value):
    """``value`` of setting (or initial hyperparameter) ``key`` with text read as the type the settings table
    declares (:func:`read_as`); in a list setting, each item that spells a number. For values written as
    numbers that arrive as text (Snakemake's ``--config``); the checks still judge the result."""
    if key in HYPERPARAMETERS:
        return read_as(FLOAT, value)
    spec = SETTINGS.get(key)
    if spec is None:
        return value
    if list in spec.types and isinstance(value, list):
        return [read_as(FLOAT, item) for item in value]
    return read_as(spec.types, value)


def coerce_number(value):
    """A number written as text made a number (anything else unchanged)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check(settings: dict, source: str) -> dict:
    """Check every key, type and domain of ``settings``; ``source`` names where they came from.
    Returns the settings with numbers written as text made numbers."""
    return {key: check_value(key, value, source) for key, value in settings.items()}


def parse_overrides(pairs: list[str]) -> dict:
    """Parse ``key=value`` strings; values are read as YAML (``1e-3``, ``true``, ``[lr]``)."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = coerce(key.strip(), yaml.safe_load(raw))
    return out


def load_settings(dataset: str, algorithm: str, overrides: list[str] | dict | None = None,
                  directory=None) -> dict:
    """Merged, checked settings of one run of ``algorithm`` on ``dataset``."""
    try:
        ds = catalog.dataset(dataset, directory)
        alg = catalog.algorithm(algorithm, directory)
    except catalog.CatalogError as err:
        raise ConfigError(str(err)) from None
    root = catalog.config_dir() if directory is None else directory
    if alg.is_derived:
        raise ConfigError(f"algorithm {algorithm!r} is not trained: it is derived from the runs of "
                          f"{alg.derived['from']!r}")
    ds_path, alg_path = f"{root}/datasets/{dataset}.yaml", f"{root}/algorithms/{algorithm}.yaml"
    settings = {key: spec.default for key, spec in SETTINGS.items()}
    settings.update(check(ds.settings, ds_path))
    if "family" in ds.settings:
        raise ConfigError(f"{ds_path}: 'family' is a top-level key, not a setting")
    settings["family"] = ds.family
    settings.update(check(alg.settings, alg_path))
    if ds.family in alg.by_family:
        settings.update(check(alg.by_family[ds.family], f"{alg_path} (by_family.{ds.family})"))
    extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides or []))
    if "family" in extra:
        raise ConfigError("setting 'family' comes from the dataset and cannot be overridden")
    settings.update(check(extra, "--set"))
    if settings["log10_lr_min"] > settings["log10_lr_max"]:
        raise ConfigError("setting 'log10_lr_min' must not exceed 'log10_lr_max'")
    if settings["weight_steps"] is not None:
        settings["hyperparameter_steps"] = -(-settings["weight_steps"] // settings["update_interval"])
    if settings["hypergradient"] == "unroll" and settings["unroll_steps"] > settings["update_interval"]:
        raise ConfigError("setting 'unroll_steps' must not exceed 'update_interval'")
    if settings["validation_proportion"] is not None and not settings["validation_proportion"] < 1:
        raise ConfigError("setting 'validation_proportion' must be below 1")
    if settings["hypergradient"] == "baydin" and settings["update_interval"] != 1:
        raise ConfigError("setting 'update_interval' must be 1 for the baydin hypergradient")
    return settings


def search_settings_keys() -> list[str]:
    """Names of the settings of a black-box search itself (not of its inner runs)."""
    return [k for k in SETTINGS if k.startswith(("search_", "asha_", "pbt_", "bayesopt_"))]
