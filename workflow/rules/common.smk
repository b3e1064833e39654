"""Config validation, wildcard constraints and the helper functions every rule uses."""

import functools
import json
import re
import shlex
from pathlib import Path

from snakemake.utils import validate

from onepass import catalog
from onepass import settings as run_config
from onepass import sweep as sweeps


validate(config, "../schemas/config.schema.yaml")

FIGURES = ["edf", "test_vs_step", "test_vs_time", "trajectories",
           "error_vs_hyperparameter", "best_worst"]
INITIAL = {"lr": "--lr", "weight_decay": "--weight-decay", "momentum": "--momentum"}
DATASETS = config["datasets"]


def check_config():
    """Cross-key checks the schema cannot express; the message names the key."""
    for key in ("algorithms", "initialisations"):
        table = config["algorithms"] if key == "algorithms" else config["sweep"][key]
        where = key if key == "algorithms" else f"sweep.{key}"
        for dataset in DATASETS:
            if dataset not in table:
                raise ValueError(f"config key '{where}' has no entry for dataset '{dataset}'")
    for key, spec in config["sweep"]["samplers"].items():
        sweeps.check_sampler(key, spec)
        if key not in INITIAL and key not in run_config.SETTINGS:
            raise ValueError(f"config key 'sweep.samplers.{key}': unknown run setting")
    for dataset, per_algorithm in config.get("overrides", {}).items():
        for algorithm, settings in per_algorithm.items():
            for key in settings:
                if key not in run_config.SETTINGS:
                    raise ValueError(
                        f"config key 'overrides.{dataset}.{algorithm}.{key}': unknown run setting")


check_config()


def algorithms_of(dataset):
    """Algorithms run on a dataset."""
    return config["algorithms"][dataset]


def n_seeds(dataset, algorithm):
    """Number of seeds of an algorithm on a dataset: the dataset's initialisations, capped by the
    algorithm's config key repetitions (a search's seed is one repetition of the whole search)."""
    n = config["sweep"]["initialisations"][dataset]
    return min(n, config.get("repetitions", {}).get(algorithm, n))


def seeds_of(dataset, algorithm):
    """Seeds of an algorithm on a dataset: 0..n-1 (see n_seeds)."""
    return list(range(n_seeds(dataset, algorithm)))


def run_paths(dataset):
    """metrics.json of every run of a dataset: each algorithm with its own seeds."""
    return [
        path
        for algorithm in algorithms_of(dataset)
        for path in expand("results/runs/{dataset}/{algorithm}/seed{seed}/metrics.json",
                           dataset=dataset, algorithm=algorithm, seed=seeds_of(dataset, algorithm))
    ]


@functools.cache
def search_kind(algorithm):
    """The algorithm's setting `search` (read once per algorithm): none, or bayesopt / asha / pbt for a black-box search."""
    return catalog.algorithm(algorithm).search


def is_search(algorithm):
    """Whether an algorithm is a black-box search (BayesOpt, ASHA, PBT, ...), run by
    python -m onepass.search."""
    return search_kind(algorithm) != "none"


def gpus_of(dataset):
    """GPUs one training run of a dataset uses (config key gpu, default 0)."""
    return config.get("gpu", {}).get(dataset, 0)


def alternatives(names):
    """Regex matching exactly one of ``names`` (and nothing if there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


ALGORITHMS = sorted({a for d in DATASETS for a in algorithms_of(d)})
CPU_DATASETS = [d for d in DATASETS if not gpus_of(d)]
GPU_DATASETS = [d for d in DATASETS if gpus_of(d)]


wildcard_constraints:
    dataset=alternatives(DATASETS),
    algorithm=alternatives(ALGORITHMS),
    seed=r"\d+",
    figure=alternatives(FIGURES),


# ---- data -----------------------------------------------------------------------------


def mirror_args(wildcards):
    """--mirror DIR for each directory of config key data_mirrors."""
    return " ".join(f"--mirror {shlex.quote(d)}" for d in config.get("data_mirrors", []))


def data_dir(wildcards, output):
    """The --data-dir holding <dataset>/prepared.pt."""
    return str(Path(output[0]).parent.parent)


# ---- sweep ----------------------------------------------------------------------------


def sweep_spec(wildcards):
    """The sweep's seed and samplers as JSON (the CLI's --spec)."""
    spec = {"seed": config["sweep"]["seed"], "samplers": config["sweep"]["samplers"]}
    return json.dumps(spec, sort_keys=True)


def n_initialisations(wildcards):
    """Number of initialisations (seeds) of the dataset."""
    return config["sweep"]["initialisations"][wildcards.dataset]


def drawn(wildcards):
    """The initialisation of this run's seed: the same row as in initialisations.tsv."""
    return sweeps.draw(config["sweep"], wildcards.dataset, int(wildcards.seed))


# ---- training -------------------------------------------------------------------------


def initial_args(wildcards):
    """--lr, --weight-decay and --momentum: this seed's row of initialisations.tsv."""
    values = drawn(wildcards)
    return " ".join(f"{flag} {float(values[key])!r}" for key, flag in INITIAL.items())


def _format(value):
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def run_settings(wildcards):
    """--set key=value for the config's overrides and the sampled non-initial keys
    (e.g. Random_SteppedLR's lr_step_factor), most specific override last."""
    overrides = config.get("overrides", {})
    settings = {}
    for dataset in ("all", wildcards.dataset):
        for algorithm in ("all", wildcards.algorithm):
            settings.update(overrides.get(dataset, {}).get(algorithm, {}))
    samplers = config["sweep"]["samplers"]
    for key, value in drawn(wildcards).items():
        if key not in INITIAL and sweeps.applies_to(samplers[key], wildcards.algorithm):
            settings[key] = value
    return " ".join(shlex.quote(f"--set={k}={_format(v)}") for k, v in settings.items())


def _resource(wildcards, key, fallback):
    resources = config.get("resources", {})
    per_dataset = resources.get(wildcards.dataset, {})
    return per_dataset.get(key, resources.get("default", {}).get(key, fallback))


def train_threads(wildcards):
    """Threads of one training run (config key resources)."""
    return _resource(wildcards, "threads", 1)


RAY_MEM_MB = (1500, 500)  # a Ray search's own processes: GCS, raylet, ... + a worker per thread


def train_mem_mb(wildcards, threads):
    """Memory (MB) of one training run (config key resources); an ASHA/PBT search adds its local
    Ray instance (measured: 1.3 GB in all for one trial at a time on UCI Energy)."""
    mem = _resource(wildcards, "mem_mb", 2000)
    if search_kind(wildcards.algorithm) in ("asha", "pbt"):
        mem += RAY_MEM_MB[0] + RAY_MEM_MB[1] * threads
    return mem


def train_runtime(wildcards):
    """Wall time (minutes) of one training run (config key resources)."""
    return _resource(wildcards, "runtime", 60)


def train_gpu(wildcards):
    """GPUs of one training run (config key gpu)."""
    return gpus_of(wildcards.dataset)


def train_group(wildcards):
    """Tiny UCI runs share group train_uci, bundled per submission by the SLURM profile; a search
    (many trainings in one job) is a job of its own."""
    if is_search(wildcards.algorithm):
        return None
    return "train_uci" if wildcards.dataset.startswith("uci_") else None


def train_module(wildcards):
    """The run's entry point: onepass.search for a black-box search, else onepass.train (both take
    the same arguments)."""
    return "onepass.search" if is_search(wildcards.algorithm) else "onepass.train"


def train_env(wildcards):
    """Conda environment of a run: envs/baselines.yaml (scikit-optimize, Ray Tune) for a search,
    else envs/onepass.yaml (paths relative to workflow/rules)."""
    return "../../envs/baselines.yaml" if is_search(wildcards.algorithm) else "../../envs/onepass.yaml"


# ---- collection, tables, figures, pages -----------------------------------------------


def run_metrics(wildcards):
    """metrics.json of every run of the dataset (each algorithm with its own seeds)."""
    return run_paths(wildcards.dataset)


def dataset_algorithms(wildcards):
    """Algorithms of the dataset, space-separated for the CLI."""
    return " ".join(algorithms_of(wildcards.dataset))


def dataset_repetitions(wildcards):
    """--repetitions A=N for each algorithm of the dataset run on fewer seeds than its
    initialisations (config key repetitions), so collect does not count the rest as missing."""
    n = config["sweep"]["initialisations"][wildcards.dataset]
    capped = [f"{a}={n_seeds(wildcards.dataset, a)}" for a in algorithms_of(wildcards.dataset)
              if n_seeds(wildcards.dataset, a) < n]
    return f"--repetitions {' '.join(capped)}" if capped else ""


def runs_dir(wildcards):
    """The dataset's runs directory."""
    return f"results/runs/{wildcards.dataset}"


def dataset_figures(wildcards):
    """PNG figures of the dataset, embedded in its analysis page."""
    return expand("results/figures/{dataset}/{figure}.png", dataset=wildcards.dataset,
                  figure=FIGURES)


def all_summaries(wildcards):
    """summary.tsv of every dataset."""
    return expand("results/tables/{dataset}/summary.tsv", dataset=DATASETS)


def all_targets(wildcards=None):
    """Every run, table, figure and analysis page of every dataset (runs are listed so a
    deleted metrics.json is rebuilt, and everything downstream of it, by a plain rerun)."""
    runs = [path for dataset in DATASETS for path in run_paths(dataset)]
    return [
        *runs,
        "results/tables/paper_tables.md",
        *expand("results/tables/{dataset}/runs.tsv", dataset=DATASETS),
        *expand("results/figures/{dataset}/{figure}.{ext}", dataset=DATASETS,
                figure=FIGURES, ext=["png", "svg"]),
        *expand("results/analysis/{dataset}.html", dataset=DATASETS),
    ]
