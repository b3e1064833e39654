"""Random-search sweeps as data: draw initial hyperparameters from sampler specs.

A sweep spec (the ``sweep`` section of the workflow config) looks like::

    seed: 2022
    samplers:
      lr: {type: log_uniform, range: [1.0e-6, 1.0e-1]}
      momentum: {type: uniform, range: [0.0, 1.0], quantize: 0.01}
      lr_step_factor: {type: uniform, range: [0.95, 1.01], algorithms: [Random_SteppedLR],
                       by_dataset: {cifar10: {range: [0.995, 1.001]}}}
      hidden_units: {type: choice, values: [64, 128]}

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

SAMPLER_TYPES = ("uniform", "log_uniform", "normal", "log_normal", "choice")
MAX_REJECTIONS = 10_000


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


def sample(key: str, spec: dict, rng: random.Random):
    """Draw one value for ``key`` from its sampler ``spec``."""
    check_sampler(key, spec)
    kind = spec["type"]
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


def draw(sweep: dict, dataset: str, seed: int, stream: str | None = None) -> dict:
    """Initial values of every sampled key for run ``seed`` of ``dataset``; ``stream`` names the random
    streams when they are another dataset's (a variant draws its base's initialisations)."""
    samplers = sweep["samplers"]
    return {
        key: sample(key, for_dataset(spec, dataset), _stream(sweep["seed"], stream or dataset, seed, key))
        for key, spec in samplers.items()
    }


def applies_to(spec: dict, algorithm: str) -> bool:
    """Whether a sampled key is passed to runs of ``algorithm``."""
    algorithms = spec.get("algorithms")
    return algorithms is None or algorithm in algorithms


def table(sweep: dict, dataset: str, n: int, stream: str | None = None):
    """The drawn initialisations of seeds 0..n-1, one row per seed (a DataFrame)."""
    import pandas as pd

    rows = [{"seed": s, **draw(sweep, dataset, s, stream)} for s in range(n)]
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
            "range": json.dumps(spec.get("range", spec.get("values"))),
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
