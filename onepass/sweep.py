"""Random-search sweeps as data: draw initial hyperparameters from sampler specs.

A sweep spec (the ``sweep`` section of the workflow config) looks like::

    seed: 2022
    samplers:
      lr: {type: log_uniform, range: [1.0e-6, 1.0e-1]}
      momentum: {type: uniform, range: [0.0, 1.0], quantize: 0.01}
      lr_step_factor: {type: uniform, range: [0.95, 1.01], algorithms: [Random_SteppedLR],
                       by_dataset: {cifar10: {range: [0.995, 1.001]}}}
      hidden_units: {type: choice, values: [64, 128]}

A ``from_files`` sampler draws nothing: seed ``s`` takes the key's value from the paper's published
initialisation file ``iteration_{s+1}.yaml`` (``inits`` of :func:`draw`, from ``onepass.data.fetch_inits``),
the same for every algorithm; :data:`FROM_FILES` says how each key is stored there. Without the files
(``inits`` None) :func:`draw` gives a reference ``{"file": N}`` in its place, which :func:`resolve` fills in.

Every (sweep seed, dataset, run seed, key) has its own random stream, so a run's
initialisation does not depend on how many runs are drawn or on the other keys:
seed ``s`` of a dataset is the same initialisation for every algorithm, and
growing a sweep from 50 to 100 runs keeps the first 50.

CLI: ``python -m onepass.sweep --spec JSON --dataset D --initialisations N
--table TSV --summary TSV``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from pathlib import Path

SAMPLER_TYPES = ("uniform", "log_uniform", "normal", "log_normal", "choice", "from_files")
MAX_REJECTIONS = 10_000
# How the paper's initialisation files store each key (config_dicts.network_weight of
# {CIFAR-10,PennTreebank}/inits/iteration_N.yaml): lr and weight decay as log10, momentum as its logit (its
# configs' transformed_hyperparameters: 10^, 10^, sigmoid), and Random_SteppedLR's per-iteration factor
# as the commented line `# lr_multiplier: x` (uncommented in its inits_scheduled_lr copies, which equal them).
FROM_FILES = {"lr": ("lr", "log10"), "weight_decay": ("weight_decay", "log10"),
              "momentum": ("momentum", "logit"), "lr_step_factor": ("lr_multiplier", "natural")}


def _stream(sweep_seed: int, dataset: str, seed: int, key: str) -> random.Random:
    """The random stream of one key of one run (stdlib Mersenne Twister: stable across versions)."""
    name = f"{int(sweep_seed)}/{dataset}/{int(seed)}/{key}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(name).digest()[:8], "big"))


def _normal(rng: random.Random, mu: float, sigma: float) -> float:
    """Box-Muller from ``rng.random()`` only, whose stream Python keeps stable."""
    u1, u2 = 1.0 - rng.random(), rng.random()
    return mu + sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _quantize(value: float, q: float | None) -> float:
    """Round ``value`` to the nearest multiple of ``q`` (no-op without ``q``)."""
    if not q:
        return float(value)
    return float(f"{round(value / q) * q:.12g}")  # .12g drops float noise like 0.6000000000000001


def _truncated_normal(rng: random.Random, low: float, high: float) -> float:
    """Normal with mean at the centre of [low, high] and 3 sigma at its ends, kept in range."""
    mu, sigma = (low + high) / 2, (high - low) / 6
    for _ in range(MAX_REJECTIONS):
        v = _normal(rng, mu, sigma)
        if low <= v <= high:
            return float(v)
    return float(min(max(mu, low), high))


def check_sampler(key: str, spec: dict) -> None:
    """Raise ValueError naming ``key`` if its sampler spec is unusable."""
    kind = spec.get("type")
    if kind not in SAMPLER_TYPES:
        raise ValueError(f"sweep.samplers.{key}.type: {kind!r} is not one of {SAMPLER_TYPES}")
    if kind == "from_files":
        if key not in FROM_FILES:
            raise ValueError(f"sweep.samplers.{key}.type: from_files can give only {', '.join(FROM_FILES)}")
        return
    if kind == "choice":
        if not spec.get("values"):
            raise ValueError(f"sweep.samplers.{key}.values: choice needs a non-empty list")
        return
    rng = spec.get("range")
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and rng[0] <= rng[1]):
        raise ValueError(f"sweep.samplers.{key}.range: need [low, high] with low <= high, got {rng!r}")
    if kind.startswith("log_") and rng[0] <= 0:
        raise ValueError(f"sweep.samplers.{key}.range: {kind} needs a positive range, got {rng!r}")


def _uniform(rng: random.Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def read_init(path) -> dict:
    """The values of every :data:`FROM_FILES` key in one of the paper's initialisation files, in natural
    units (a ValueError naming the file if one is missing)."""
    import re

    import yaml

    text = Path(path).read_text()
    stored = dict(((yaml.safe_load(text) or {}).get("config_dicts") or {}).get("network_weight") or {})
    commented = re.search(r"^\s*#\s*lr_multiplier:\s*(\S+)\s*$", text, re.MULTILINE)
    if commented and "lr_multiplier" not in stored:
        stored["lr_multiplier"] = float(commented.group(1))
    out = {}
    for key, (field, form) in FROM_FILES.items():
        if field not in stored:
            raise ValueError(f"{path}: no config_dicts.network_weight.{field}")
        x = float(stored[field])
        out[key] = 10 ** x if form == "log10" else 1 / (1 + math.exp(-x)) if form == "logit" else x
    return out


def sample(key: str, spec: dict, rng: random.Random):
    """Draw one value for ``key`` from its sampler ``spec`` (not ``from_files``: see :func:`draw`)."""
    check_sampler(key, spec)
    kind = spec["type"]
    if kind == "from_files":
        raise ValueError(f"sweep.samplers.{key}: a from_files value is read by draw(), not sampled")
    if kind == "choice":
        values = spec["values"]
        return values[min(int(rng.random() * len(values)), len(values) - 1)]
    low, high = (float(x) for x in spec["range"])
    if kind == "uniform":
        v = _uniform(rng, low, high)
    elif kind == "log_uniform":
        v = 10 ** _uniform(rng, math.log10(low), math.log10(high))
    elif kind == "normal":
        v = _truncated_normal(rng, low, high)
    else:  # log_normal
        v = 10 ** _truncated_normal(rng, math.log10(low), math.log10(high))
    return _quantize(v, spec.get("quantize"))


def for_dataset(spec: dict, dataset: str) -> dict:
    """A sampler as it applies to ``dataset``: its ``by_dataset`` entry for it replacing its own fields."""
    own = {k: v for k, v in spec.items() if k != "by_dataset"}
    return {**own, **(spec.get("by_dataset") or {}).get(dataset, {})}


def from_files(sweep: dict, dataset: str) -> list[str]:
    """The keys whose values ``dataset`` takes from the paper's initialisation files."""
    return [key for key, spec in sweep["samplers"].items() if for_dataset(spec, dataset)["type"] == "from_files"]


def file_number(seed: int) -> int:
    """The initialisation file of a seed: seed s is the paper's iteration_{s+1}.yaml (its SLURM array 1..50)."""
    return int(seed) + 1


def draw(sweep: dict, dataset: str, seed: int, stream: str | None = None, inits: dict | None = None) -> dict:
    """Initial values of every sampled key for run ``seed`` of ``dataset``; ``stream`` names the random
    streams when they are another dataset's (a variant draws its base's initialisations). ``inits``
    ({N: path} of the paper's files) gives the ``from_files`` keys; without it they are references
    ``{"file": N}`` (see :func:`resolve`)."""
    out, stored = {}, None
    for key, spec in sweep["samplers"].items():
        spec = for_dataset(spec, dataset)
        if spec["type"] != "from_files":
            out[key] = sample(key, spec, _stream(sweep["seed"], stream or dataset, seed, key))
        elif inits is None:
            out[key] = {"file": file_number(seed)}
        else:
            if file_number(seed) not in inits:
                raise ValueError(f"sweep.samplers.{key}: seed {seed} needs initialisation file "
                                 f"{file_number(seed)}, and there are {len(inits)}")
            stored = stored or read_init(inits[file_number(seed)])
            out[key] = stored[key]
    return out


def resolve(values: dict, inits: dict) -> dict:
    """``values`` (a draw, or a member's values) with every reference ``{"file": N}`` replaced by the key's
    value in file N of ``inits``."""
    return {key: read_init(inits[v["file"]])[key] if isinstance(v, dict) and set(v) == {"file"} else v
            for key, v in values.items()}


def applies_to(spec: dict, algorithm: str) -> bool:
    """Whether a sampled key is passed to runs of ``algorithm``."""
    algorithms = spec.get("algorithms")
    return algorithms is None or algorithm in algorithms


def table(sweep: dict, dataset: str, n: int, stream: str | None = None, inits: dict | None = None):
    """The drawn initialisations of seeds 0..n-1, one row per seed (a DataFrame)."""
    import pandas as pd

    rows = [{"seed": s, **draw(sweep, dataset, s, stream, inits)} for s in range(n)]
    return pd.DataFrame(rows, columns=["seed", *sweep["samplers"]])


def summary(sweep: dict, drawn, dataset: str | None = None):
    """One row per sampled key: its sampler (as it applies to ``dataset``) and the spread of the drawn values
    (a DataFrame)."""
    import pandas as pd

    rows = []
    for key, spec in sweep["samplers"].items():
        spec = for_dataset(spec, dataset) if dataset else spec
        col = drawn[key]
        numeric = pd.api.types.is_numeric_dtype(col)
        rows.append({
            "key": key,
            "type": spec["type"],
            "range": "paper files" if spec["type"] == "from_files" else
                     json.dumps(spec.get("range", spec.get("values"))),
            "quantize": spec.get("quantize", ""),
            "algorithms": ",".join(spec.get("algorithms", [])) or "all",
            "n": len(col),
            "min": col.min() if numeric else "",
            "median": col.median() if numeric else "",
            "max": col.max() if numeric else "",
            "sweep_seed": sweep["seed"],
        })
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    """Write the initialisation table and its summary for one dataset."""
    p = argparse.ArgumentParser(prog="python -m onepass.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="sweep spec as JSON (seed, samplers)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--initialisations", type=int, required=True, help="number of seeds")
    p.add_argument("--table", required=True, help="output TSV, one row per seed")
    p.add_argument("--summary", required=True, help="output TSV, one row per sampled key")
    args = p.parse_args(argv)
    sweep = json.loads(args.spec)
    drawn = table(sweep, args.dataset, args.initialisations)
    drawn.to_csv(args.table, sep="\t", index=False)
    summary(sweep, drawn, args.dataset).to_csv(args.summary, sep="\t", index=False)
    print(f"{args.dataset}: {len(drawn)} initialisations -> {args.table}")


if __name__ == "__main__":
    main()
