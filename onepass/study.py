"""A study: its config (config/config.yaml, config/quick.yaml) checked, and everything derived from it.

The study config says which datasets and algorithms run, how initial hyperparameters are drawn (``sweep``),
how many seeds each algorithm gets (``repetitions``), which run settings change (``overrides``), and how the
work is cut into jobs (``members_per_job``, ``gpu``, ``resources``); config/README.md describes every key. This
module turns it into what the workflow runs: per (dataset, algorithm) the seeds, the run settings and the
initial hyperparameters of every seed, written down per dataset as a *plan* (``plan.json``), and the
directories where everything lives (which seeds train together is onepass.packing's). The workflow's rules
are thin adapters to these functions; nothing here knows about Snakemake.

    python -m onepass.study sweep --config JSON --dataset D --out-dir results/<study>/sweep/D
    python -m onepass.study chunk-plan --config JSON --dataset D --algorithm A --seeds 0-24 --out PATH
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import sys
from pathlib import Path

from . import catalog, plans, sweep
from .paths import MIRRORS_ENV, RESULTS, data_dir, run_dir
from .settings import (HYPERPARAMETERS, SETTINGS, ConfigError, check_initial, check_value, identity,
                       load_settings)

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class StudyConfigError(ValueError):
    """A study config key is unknown, of the wrong type or outside its domain; the message names it."""


# ---- reading and checking the config -------------------------------------------------------------------
def normalise(value):
    """The config with numbers that YAML 1.1 reads as text (``1e-6``) made numbers."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def where(key: str, sources) -> str:
    """Which of ``sources`` (an ordered list of (name, mapping), later ones winning, as Snakemake merges
    config files) sets the dotted config ``key``: the last that does, or the first source's name."""
    found = None
    for name, data, *_ in sources or []:
        node = data
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            found = name
    return found or (sources[0][0] if sources else "the config")


def fail(key: str, message: str, sources):
    """Stop on a bad config key: a StudyConfigError naming the key and the file that sets it."""
    raise StudyConfigError(f"config key '{key}' in {where(key, sources)}: {message}")


def validate(config: dict, schema: dict, sources=None) -> dict:
    """The normalised config (:func:`normalise`), checked against the JSON schema and by :func:`check`; a
    :class:`StudyConfigError` names the first bad key and the file setting it, in one short message."""
    import jsonschema

    config = normalise(config)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        message = error.message if len(error.message) < 200 else error.message[:200] + "..."
        if error.validator == "additionalProperties" and "(" in message:
            extra = re.findall(r"'([^']+)'", message)
            path = ".".join(filter(None, [path, extra[0] if extra else ""]))
            message = "unknown key"
        fail(path or "(top level)", message, sources)
    config = apply_defaults(config)
    try:
        catalog.add_directories(config["catalog"])
    except catalog.CatalogError as err:
        fail("catalog", str(err), sources)
    check(config, sources)
    return config


def from_json(text: str) -> dict:
    """A study config passed to a command as JSON, normalised and with its optional keys filled in."""
    return apply_defaults(normalise(json.loads(text)))


@functools.cache
def schema() -> dict:
    """The study config's JSON schema (:data:`SCHEMA`): its keys, their types and their defaults."""
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def apply_defaults(config: dict) -> dict:
    """The config with every optional key that is missing or null set to its ``default`` in the schema (the
    one place the defaults are written)."""
    out = dict(config)
    for key, spec in schema()["properties"].items():
        if "default" in spec and out.get(key) is None:
            out[key] = copy.deepcopy(spec["default"])
    return out


def check(config: dict, sources=None) -> None:
    """The checks a JSON schema cannot express: names against the catalogue, every dataset's entries,
    sampler ranges against their keys' domains, every override against the settings table, and every
    (dataset, algorithm)'s merged settings."""
    try:
        known_datasets, known_algorithms = catalog.datasets(), catalog.algorithms()
    except catalog.CatalogError as err:
        fail("catalog" if config.get("catalog") else "datasets", str(err), sources)
    for i, name in enumerate(config["datasets"]):
        if name not in known_datasets:
            fail(f"datasets.{i}", f"unknown dataset {name!r}; known: {', '.join(known_datasets)}", sources)
        if known_datasets[name].is_user:
            from .user import UserCodeError, check as check_functions  # torch only for a user's dataset

            try:
                check_functions(known_datasets[name])
            except UserCodeError as err:
                fail(f"datasets.{i}", str(err), sources)
    for key in ("algorithms", "sweep.initialisations"):
        table = config["algorithms"] if key == "algorithms" else config["sweep"]["initialisations"]
        for dataset in config["datasets"]:
            if dataset not in table:
                fail(key, f"no entry for dataset {dataset!r}", sources)
    for dataset, names in config["algorithms"].items():
        for i, name in enumerate(names):
            if name not in known_algorithms:
                fail(f"algorithms.{dataset}.{i}", f"unknown algorithm {name!r}; known: "
                      f"{', '.join(n for n, a in known_algorithms.items() if not a.is_derived)}", sources)
            if known_algorithms[name].is_derived:
                fail(f"algorithms.{dataset}.{i}", f"{name} is derived from the runs of "
                      f"{known_algorithms[name].derived['from']}: list that instead", sources)
    for name in config["repetitions"]:
        if name not in known_algorithms:
            fail(f"repetitions.{name}", f"unknown algorithm {name!r}", sources)
    for table in ("gpu", "resources", "members_per_job", "sweep.initialisations"):
        node = config["sweep"]["initialisations"] if table == "sweep.initialisations" else config[table]
        for name in node:
            if name != "default" and name not in known_datasets:
                fail(f"{table}.{name}", f"unknown dataset {name!r}", sources)
    for key, spec in config["sweep"]["samplers"].items():
        _check_sampler(key, {k: v for k, v in spec.items() if k != "by_dataset"}, sources)
        for dataset, variant in (spec.get("by_dataset") or {}).items():
            if dataset not in known_datasets:
                fail(f"sweep.samplers.{key}.by_dataset.{dataset}", f"unknown dataset {dataset!r}", sources)
            _check_sampler(key, sweep.for_dataset(spec, dataset), sources, f"sweep.samplers.{key}.by_dataset.{dataset}")
    for dataset in config["datasets"]:
        _check_files(config, dataset, sources)
    for dataset, per_algorithm in config["overrides"].items():
        if dataset != "all" and dataset not in known_datasets:
            fail(f"overrides.{dataset}", f"unknown dataset {dataset!r}", sources)
        for algorithm, changed in (per_algorithm or {}).items():
            if algorithm != "all" and algorithm not in known_algorithms:
                fail(f"overrides.{dataset}.{algorithm}", f"unknown algorithm {algorithm!r}", sources)
            for key, value in (changed or {}).items():
                try:
                    check_value(key, value, "")
                except ConfigError as err:
                    fail(f"overrides.{dataset}.{algorithm}.{key}", str(err), sources)
    for dataset in config["datasets"]:
        for algorithm in algorithms(config, dataset):
            try:
                settings(config, dataset, algorithm)
            except ConfigError as err:
                # name the most specific override that sets a setting the error names (else the most
                # specific that applies), in the merge order of onepass.study.overrides
                named = set(re.findall(r"'(\w+)'", str(err)))
                keys = [(f"overrides.{d}.{a}", (config["overrides"].get(d) or {}).get(a) or {})
                        for d in (dataset, "all") for a in (algorithm, "all")
                        if a in (config["overrides"].get(d) or {})]
                culprits = [k for k, changed in keys if named & set(changed)] or [k for k, _ in keys]
                fail(culprits[0] if culprits else f"algorithms.{dataset}",
                      f"the merged run settings of {algorithm} on {dataset} are invalid: {err}", sources)


def _check_files(config: dict, dataset: str, sources) -> None:
    """A dataset taking keys from the paper's initialisation files must have as many files as seeds."""
    keys = sweep.from_files(config["sweep"], dataset)
    if not keys:
        return
    from . import data  # imports torch: only for a study that reads the files

    base = catalog.dataset(dataset).base
    available = len(data.init_digests(base))
    spec = config["sweep"]["samplers"][keys[0]]
    key = f"sweep.samplers.{keys[0]}" + (".by_dataset." + dataset if dataset in (spec.get("by_dataset") or {})
                                         else "")
    if not available:
        fail(key, f"{dataset} has no published initialisation files (paper_init_N.yaml rows of {base} in "
                  "config/sources.tsv) to take from_files", sources)
    wanted = config["sweep"]["initialisations"][dataset]
    if wanted > available:
        fail(f"sweep.initialisations.{dataset}", f"{wanted} initialisations requested, but the paper published "
             f"{available} for {base}, which {', '.join(keys)} take from_files: ask for at most {available}, "
             "or draw them at random", sources)


def _check_sampler(key: str, spec: dict, sources, where_key: str | None = None) -> None:
    where_key = where_key or f"sweep.samplers.{key}"
    try:
        sweep.check_sampler(key, spec)
    except ValueError as err:
        fail(where_key, str(err).split(": ", 1)[-1], sources)
    if key not in HYPERPARAMETERS and key not in SETTINGS:
        fail(where_key, "unknown run setting", sources)
    for name in spec.get("algorithms", []):
        if name not in catalog.algorithms():
            fail(f"{where_key}.algorithms", f"unknown algorithm {name!r}", sources)
    if spec["type"] == "from_files":
        return
    values = spec.get("values") if spec["type"] == "choice" else spec["range"]
    for value in values:  # the key's own domain (a log scale's positive range is the sampler's check)
        try:
            check_initial(key, value) if key in HYPERPARAMETERS else check_value(key, value, "")
        except ConfigError as err:
            fail(where_key, str(err) if key in HYPERPARAMETERS
                 else f"{value!r} is outside the domain of {key} ({err})", sources)


# ---- what runs --------------------------------------------------------------------------------------------
def algorithms(config: dict, dataset: str) -> list[str]:
    """Algorithms run on a dataset."""
    return list(config["algorithms"][dataset])


def seeds(config: dict, dataset: str, algorithm: str) -> list[int]:
    """Seeds of an algorithm on a dataset: 0..n-1, n the dataset's initialisations capped by the algorithm's
    ``repetitions`` (a search's seed is one repetition of the whole search)."""
    n = config["sweep"]["initialisations"][dataset]
    return list(range(min(n, config["repetitions"].get(algorithm, n))))


def overrides(config: dict, dataset: str, algorithm: str) -> dict:
    """The run settings the config changes for (dataset, algorithm): ``overrides`` merged in the order
    all/all, all/algorithm, dataset/all, dataset/algorithm (the most specific wins)."""
    merged = {}
    for d in ("all", dataset):
        for a in ("all", algorithm):
            merged.update((config["overrides"].get(d) or {}).get(a) or {})
    return merged


def member_settings(config: dict, algorithm: str) -> list[str]:
    """The sampled keys besides the initial hyperparameters that go to runs of ``algorithm`` as per-member
    settings (a sampler without ``algorithms`` applies to every algorithm)."""
    return [key for key, spec in config["sweep"]["samplers"].items()
            if key not in HYPERPARAMETERS and sweep.applies_to(spec, algorithm)]


def settings(config: dict, dataset: str, algorithm: str) -> dict:
    """The resolved run settings of (dataset, algorithm), per-member settings at their defaults."""
    return load_settings(dataset, algorithm, overrides(config, dataset, algorithm))


def settings_identity(config: dict, dataset: str, algorithm: str) -> dict:
    """The settings that determine the results of (dataset, algorithm)'s runs (bookkeeping left out)."""
    return identity(settings(config, dataset, algorithm))


def member_of(config: dict, dataset: str, algorithm: str, seed: int, inits: dict | None = None) -> dict:
    """A seed's member of (dataset, algorithm): its drawn initial hyperparameters and per-member settings.
    ``inits`` ({N: path}, :func:`init_files`) gives the values a dataset takes from the paper's files; without
    it they are references ``{"file": N}`` (:func:`onepass.plans.resolve_chunk_plan` fills them in)."""
    drawn = sweep.draw(config["sweep"], dataset, seed, catalog.dataset(dataset).base, inits)
    return {"seed": seed,
            **{k: drawn[k] if isinstance(drawn[k], dict) else float(drawn[k]) for k in HYPERPARAMETERS},
            "settings": {k: drawn[k] for k in member_settings(config, algorithm)}}


def takes_files(config: dict, dataset: str) -> bool:
    """Whether a dataset takes initial values from the paper's initialisation files (``from_files``)."""
    return bool(sweep.from_files(config["sweep"], dataset))


def init_files(config: dict, dataset: str, data_dir, download: bool = True, mirrors=None) -> dict | None:
    """The paper's initialisation files of a dataset that takes values from them, fetched and verified into
    ``data_dir`` (from ``mirrors`` first, default those of ``ONEPASS_DATA_MIRRORS``): {N: path}; None for one
    that does not."""
    if not takes_files(config, dataset):
        return None
    from . import data

    try:
        return data.fetch_inits(catalog.dataset(dataset).base, data_dir, mirrors or None, download=download)
    except data.DataError as err:
        raise ConfigError(f"the initialisation files of {dataset}: {err}") from None


def mirrors(config: dict, current: str = "") -> list[str]:
    """The mirror directories of a study's data jobs: the config's ``data_mirrors`` (absolute), then those of
    ``current`` (the value of ``ONEPASS_DATA_MIRRORS``, ``:``-separated)."""
    given = [str(Path(d).expanduser().resolve()) for d in config.get("data_mirrors", [])]
    return list(dict.fromkeys([*given, *(d for d in current.split(":") if d)]))


def initialisations(config: dict, dataset: str, inits: dict | None = None) -> list[dict]:
    """Every seed's drawn initialisation (the rows of initialisations.tsv); ``inits`` as :func:`member_of`."""
    n = config["sweep"]["initialisations"][dataset]
    base = catalog.dataset(dataset).base  # a variant draws its base's initialisations
    return [{"seed": s, **sweep.draw(config["sweep"], dataset, s, base, inits)} for s in range(n)]


# ---- where everything lives -------------------------------------------------------------------------------
def study_dir(config: dict) -> str:
    """The study's own directory: results/<study>."""
    return f"{RESULTS}/{config['study']}"


def runs_dir(config: dict, dataset: str, algorithm: str | None = None) -> str:
    """The runs of a dataset, or of one algorithm on it."""
    base = f"{study_dir(config)}/runs/{dataset}"
    return base if algorithm is None else f"{base}/{algorithm}"


def chunk_name(chunk: list[int]) -> str:
    """The name of a chunk of seeds: seeds<first>-<last>."""
    return f"seeds{chunk[0]}-{chunk[-1]}"


# ---- the plan of a dataset ----------------------------------------------------------------------------------
def dataset_config(config: dict, dataset: str) -> dict:
    """The part of the config that decides a dataset's runs (a change elsewhere leaves its plan alone)."""
    names = algorithms(config, dataset)
    return {"study": config["study"], "dataset": dataset, "algorithms": {dataset: names},
            "datasets": [dataset],
            "sweep": {"seed": config["sweep"]["seed"], "samplers": config["sweep"]["samplers"],
                      "initialisations": {dataset: config["sweep"]["initialisations"][dataset]}},
            "repetitions": {a: n for a, n in config["repetitions"].items() if a in names},
            "overrides": {d: {a: s for a, s in per.items() if a in ("all", *names)}
                          for d, per in config["overrides"].items() if d in ("all", dataset)},
            "data_mirrors": []}


def plan(config: dict, dataset: str, inits: dict | None = None) -> dict:
    """Everything the runs of a dataset need and everything collection checks them against: per algorithm its
    search kind, seeds, overrides, per-member settings and resolved settings (their identity); per
    seed its initialisation (``inits``: the paper's files, for a dataset that takes values from them)."""
    out = {"format": plans.PLAN_FORMAT, "study": config["study"], "dataset": dataset,
           "initialisations": initialisations(config, dataset, inits), "algorithms": {}}
    for algorithm in algorithms(config, dataset):
        out["algorithms"][algorithm] = {
            "search": catalog.algorithm(algorithm).search, "seeds": seeds(config, dataset, algorithm),
            "overrides": overrides(config, dataset, algorithm),
            "member_settings": member_settings(config, algorithm),
            "settings": identity(settings(config, dataset, algorithm))}
    return out


def chunk_plan(config: dict, dataset: str, algorithm: str, chunk: list[int], inits: dict | None = None) -> dict:
    """Everything one job needs, and nothing else: the (dataset, algorithm), the settings it changes and
    their resolved identity, and every member of the chunk. Written per chunk, so that a change elsewhere in
    the config leaves the chunk's plan, and so its runs, alone. The device is no part of it: a run trained on
    the CPU and one trained on a GPU from the same plan are the same run (they agree to floating-point
    round-off; tests/test_cuda.py). For a dataset that
    takes values from the paper's files, without ``inits`` the members hold references to them, and
    ``init_files`` their SHA-256s (so the plan changes with them); :func:`onepass.plans.resolve_chunk_plan` reads them."""
    return chunk_plans(config, dataset, algorithm, [chunk], inits)[0]


def chunk_plans(config: dict, dataset: str, algorithm: str, chunks, inits: dict | None = None) -> list[dict]:
    """:func:`chunk_plan` of each of ``chunks`` of (dataset, algorithm), the settings resolved once for all
    of them (what the workflow hashes into a job's identity, for hundreds of jobs; the job writes its own
    plan through the same function, so the hash follows it)."""
    head = {"format": plans.PLAN_FORMAT, "study": config["study"], "dataset": dataset, "algorithm": algorithm,
            "search": catalog.algorithm(algorithm).search, "overrides": overrides(config, dataset, algorithm),
            "settings": settings_identity(config, dataset, algorithm)}
    digests = None
    if takes_files(config, dataset):
        from . import data

        digests = data.init_digests(catalog.dataset(dataset).base)
    out = []
    for chunk in chunks:
        content = {**head, "members": [member_of(config, dataset, algorithm, s, inits) for s in chunk]}
        if digests is not None:
            content["init_files"] = {str(sweep.file_number(s)): digests.get(sweep.file_number(s)) for s in chunk}
        out.append(content)
    return out


def seed_ranges(chunk: list[int]) -> str:
    """Seeds written short: ``0-24``, ``0-3,7,9-10``."""
    parts, i = [], 0
    while i < len(chunk):
        j = i
        while j + 1 < len(chunk) and chunk[j + 1] == chunk[j] + 1:
            j += 1
        parts.append(str(chunk[i]) if i == j else f"{chunk[i]}-{chunk[j]}")
        i = j + 1
    return ",".join(parts)


def parse_seed_ranges(text: str) -> list[int]:
    """The seeds of :func:`seed_ranges`'s text."""
    seeds = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


# ---- the command -------------------------------------------------------------------------------------------
def write_sweep(config: dict, dataset: str, out_dir, data_root=None, mirrors=None) -> dict:
    """Write a dataset's initialisations.tsv, summary.tsv and plan.json into ``out_dir``; returns the plan.
    A dataset that takes values from the paper's initialisation files fetches them into ``data_root``
    (default :func:`data_dir`), from ``mirrors`` first (default ``ONEPASS_DATA_MIRRORS``'s)."""
    from .records import atomic_write

    inits = init_files(config, dataset, data_root or data_dir(), mirrors=mirrors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = sweep.table(config["sweep"], dataset, config["sweep"]["initialisations"][dataset],
                        catalog.dataset(dataset).base, inits)
    atomic_write(out_dir / "initialisations.tsv", lambda tmp: drawn.to_csv(tmp, sep="\t", index=False))
    summary = sweep.summary(config["sweep"], drawn, dataset)
    atomic_write(out_dir / "summary.tsv", lambda tmp: summary.to_csv(tmp, sep="\t", index=False))
    content = plan(config, dataset, inits)
    atomic_write(out_dir / "plan.json", lambda tmp: tmp.write_text(json.dumps(content, indent=1) + "\n"))
    return content


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.study", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="a dataset's initialisations.tsv, summary.tsv and plan.json")
    s.add_argument("--config", required=True, help="the study config (or its dataset_config) as JSON")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out-dir", required=True)
    s.add_argument("--data-dir", default=data_dir(),
                   help="where the paper's initialisation files are fetched, for a dataset that takes them")
    s.add_argument("--mirror", action="append",
                   help=f"a directory holding those files (repeatable; default ${MIRRORS_ENV})")
    c = sub.add_parser("chunk-plan", help="a chunk's plan, from the study config (or given as JSON), its "
                                          "references to the paper's initialisation files resolved")
    given = c.add_mutually_exclusive_group(required=True)
    given.add_argument("--plan", help="the chunk plan (onepass.study.chunk_plan) as JSON")
    given.add_argument("--config", help="the study config (or its dataset_config) as JSON, with --dataset, "
                                        "--algorithm and --seeds")
    c.add_argument("--dataset")
    c.add_argument("--algorithm")
    c.add_argument("--seeds", help="the chunk's seeds, e.g. 0-24 or 0-3,7")
    c.add_argument("--data-dir", default=data_dir(), help="where the initialisation files are fetched")
    c.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.command == "chunk-plan":
            if args.config and not (args.dataset and args.algorithm and args.seeds):
                raise ConfigError("--config needs --dataset, --algorithm and --seeds")
            content = (json.loads(args.plan) if args.plan else
                       chunk_plan(from_json(args.config), args.dataset, args.algorithm,
                                  parse_seed_ranges(args.seeds)))
            plans.write_chunk_plan(content, args.data_dir, args.out)
            print(f"wrote {args.out}")
            return 0
        config = from_json(args.config)
        check(config)
        content = write_sweep(config, args.dataset, args.out_dir, args.data_dir, args.mirror)
    except (StudyConfigError, ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = sum(len(a["seeds"]) for a in content["algorithms"].values())
    print(f"{args.dataset}: {len(content['initialisations'])} initialisations, {runs} runs -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
