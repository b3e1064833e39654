"""The config, checked once, and thin adapters from rules and wildcards to onepass.study."""

import contextlib
import json
import os
import re
import shlex
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.resources import Resource
from snakemake.utils import update_config

from onepass import appendix, budget, catalog, devices, figures, heatmaps, jobs, study
from onepass.config_text import typed


def config_sources():
    """The config files in the order Snakemake merged them (the Snakefile's, then --configfile's), then
    --config: for naming the file that sets a bad key. Each is (name, mapping, given on the command line).
    """
    given = [Path(p).absolute() for p in workflow.overwrite_configfiles]
    default = [p for p in workflow.configfiles if Path(p).absolute() not in given]
    sources = []
    for path in [*default, *given]:
        with contextlib.suppress(
            OSError, yaml.YAMLError
        ):  # Snakemake reports those itself
            data = yaml.safe_load(Path(path).read_text()) or {}
            sources.append(
                (os.path.relpath(path), data, Path(path).absolute() in given)
            )
    if workflow.config_settings.config:
        sources.append(("--config", dict(workflow.config_settings.config), True))
    return sources


def own_appendix(sources):
    """The appendix studies belong to the config that asks for them: once a config is given on the command
    line (--configfile, --config), the Snakefile's config/config.yaml lends it no `appendix` (mappings would
    otherwise merge, and a three-line study would inherit the paper's 156 sensitivity cells).
    """
    appendix = {}
    for _, data, on_command_line in sources:
        if on_command_line and isinstance(data.get("appendix"), dict):
            update_config(appendix, data["appendix"])
    return appendix


def gpus_offered():
    """GPUs this run offers: the executor's `gpu` resource where the profile or --resources declares one,
    else the CUDA devices this process sees (declared as that resource, so that jobs asking for a GPU share
    them one at a time). A cluster job (which gets no --resources) sees the GPUs SLURM gave it.
    """
    declared = workflow.global_resources.get("gpu")
    if declared is not None and declared.value is not None:
        return int(declared.value)
    found = devices.visible_gpus(in_job=not workflow.is_main_process)
    workflow.register_resource("gpu", Resource("gpu", found))
    return found


def alternatives(names):
    """A regex matching exactly one of ``names`` (and nothing if there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


SCHEMA = study.schema()
SOURCES = config_sources()
if any(on_command_line for _, _, on_command_line in SOURCES):
    config["appendix"] = own_appendix(SOURCES)
# --config's nested numbers come as text (YAML's BaseLoader): read as the types the schema and settings declare
config.update(
    study.validate(
        typed(config, workflow.config_settings.config, SCHEMA), SCHEMA, SOURCES
    )
)
appendix.check(config, SOURCES)
# a study's own catalogue directories (the config's `catalog`) reach its jobs through their environment
if config["catalog"]:
    shell.prefix(
        f"export {catalog.CATALOG_ENV}={shlex.quote(catalog.catalog_variable())}; "
    )
# cpu or cuda for the whole study; a cluster job re-decides it from its own gpu resource (never strictly)
config["device"] = jobs.resolve_device(
    config, gpus_offered(), SOURCES, strict=workflow.is_main_process
)


def planning_cores():
    """The cores given to Snakemake (--cores), or None where it sets no limit (a cluster, a dry run)."""
    cores = workflow.global_resources.get("_cores")
    cores = getattr(cores, "value", cores)  # a Resource in Snakemake 9
    return cores if isinstance(cores, int) and 0 < cores < 2**20 else None


# every dataset's members_per_job a number (`auto` resolved for the cores and this machine's cache), so
# that the jobs, their plans and the sweep command cut the seeds alike
config["members_per_job"] = jobs.resolve_members_per_job(config, planning_cores())

STUDY = study.study_dir(config)
DATA = study.data_dir()
DATASETS = config["datasets"]
APPENDIX = appendix.appendix_dir(config)
SENSITIVITY_CELLS = (
    appendix.sensitivity_cells(config)
    if appendix.enabled(config, "sensitivity")
    else []
)
APPENDIX_PARTS = [p for p in ("sensitivity", "quality") if appendix.enabled(config, p)]
APPENDIX_DATASETS = [appendix.spec(config, p)["dataset"] for p in APPENDIX_PARTS]
ALGORITHMS = sorted(
    {a for d in DATASETS for a in study.algorithms(config, d)}
    | {a for a, _ in SENSITIVITY_CELLS}
)


class Untracked:
    """A param that is no part of its outputs' identity: Snakemake's params trigger skips values it cannot
    represent, and the shell command reads it as text."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


# the dataset mirrors of the data jobs, as their --mirror options: the config's data_mirrors, then those of
# ONEPASS_DATA_MIRRORS (where a dataset's files come from does not change it, so no rerun when they move)
MIRRORS = Untracked(
    " ".join(
        f"--mirror {shlex.quote(m)}"
        for m in study.mirrors(config, os.environ.get(study.MIRRORS_ENV, ""))
    )
)


wildcard_constraints:
    dataset=alternatives(DATASETS),
    base=alternatives(
        sorted({catalog.dataset(d).base for d in [*DATASETS, *APPENDIX_DATASETS]})
    ),
    cell=r"T\d+_K\d+|baseline",
    part=alternatives(APPENDIX_PARTS),
    algorithm=alternatives(ALGORITHMS),
    figure=alternatives(figures.KINDS),
    first=r"\d+",
    last=r"\d+",


# ---- training jobs: one per chunk of seeds --------------------------------------------------------------


def chunks():
    """Every (dataset, algorithm, chunk of seeds) of the study: one training job each."""
    return [
        (dataset, algorithm, chunk)
        for dataset in DATASETS
        for algorithm in study.algorithms(config, dataset)
        for chunk in study.chunks(config, dataset, algorithm)
    ]


def run_outputs(dataset, algorithm, seeds, name):
    """``name`` (metrics.json, history.csv) of every run of these seeds."""
    runs = study.runs_dir(config, dataset, algorithm)
    return [f"{study.run_dir(runs, seed)}/{name}" for seed in seeds]


def job_resources(dataset, algorithm, chunk):
    """Portable resources of a chunk's job; mem_mb and runtime grow with each retry."""
    first = jobs.resources(config, dataset, algorithm, len(chunk))
    return {
        "threads": first["threads"],
        "gpu": first["gpu"],
        "mem_mb": lambda wildcards, attempt: first["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: first["runtime"] * attempt,
    }


# ---- collection, figures, pages ----------------------------------------------------------------------------


def dataset_run_files(dataset, name):
    """``name`` (metrics.json, history.csv) of every run of the dataset."""
    return [
        path
        for algorithm in study.algorithms(config, dataset)
        for path in run_outputs(
            dataset, algorithm, study.seeds(config, dataset, algorithm), name
        )
    ]


def dataset_runs(name):
    """An input function: ``name`` of every run of the wildcards' dataset."""
    return lambda wildcards: dataset_run_files(wildcards.dataset, name)


def study_runs(wildcards):
    """Every run's records (the study's and the sensitivity cells'), the target all asks for them. Snakemake does
    not remake a missing intermediate file once everything after it exists, so a run deleted to retrain it
    is remade only as a target of its own (and then everything after it follows)."""
    return [
        *(
            path
            for dataset in DATASETS
            for name in ("metrics.json", "history.csv")
            for path in dataset_run_files(dataset, name)
        ),
        *(
            path
            for algorithm, cell in SENSITIVITY_CELLS
            for path in appendix.cell_metrics(config, algorithm, cell)
        ),
    ]


def plan_notice(wildcards):
    """An input function of the target `all` that adds nothing: once, as Snakemake plans the study (a dry run too),
    it logs what the study asks for (onepass.budget): runs, jobs, CPU- and GPU-hours."""
    if not PLAN_SHOWN:
        PLAN_SHOWN.append(True)
        logger.info(budget.text(config))
    return []


PLAN_SHOWN = []


def runs_dir(wildcards):
    """The dataset's runs directory."""
    return study.runs_dir(config, wildcards.dataset)


def figure_caption(wildcards):
    """The figure's caption (for the report), from onepass.figures."""
    return figures.caption(wildcards.figure, catalog.dataset_label(wildcards.dataset))
