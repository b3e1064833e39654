"""The config, checked once and resolved into the planned study (onepass.planned: datasets, algorithms, seeds,
packing, device) that every rule reads; thin adapters from rules and wildcards to onepass. Snakemake's
`config` is left as Snakemake read it: the rules read CONFIG, the checked config of the planned study.
"""

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import update_config

import snakemake_internals as internals  # workflow/rules/snakemake_internals.py: Snakemake's internals
from onepass import (
    appendix,
    budget,
    catalog,
    devices,
    figures,
    heatmaps,
    jobs,
    paths,
    planned,
    study,
)
from onepass.config_text import typed


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
    declared = internals.declared_gpus(workflow)
    if declared is not None:
        return declared
    found = devices.visible_gpus(in_job=not internals.is_main_process(workflow))
    internals.offer_gpus(workflow, found)
    return found


def alternatives(names):
    """A regex matching exactly one of ``names`` (and nothing if there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


SOURCES = internals.config_sources(workflow)
ASKED = (
    {**config, "appendix": own_appendix(SOURCES)}
    if any(on_command_line for _, _, on_command_line in SOURCES)
    else config
)
SCHEMA = study.schema()
# --config's nested numbers come as text (YAML's BaseLoader): read as the types the schema and settings declare
CHECKED = study.validate(
    typed(ASKED, internals.command_line_config(workflow), SCHEMA), SCHEMA, SOURCES
)
appendix.check(CHECKED, SOURCES)
# The one call that resolves the study: the device (cpu or cuda: a cluster job re-decides it from its own
# gpu resource, never strictly) and the packing, read from results/<study>/packing/ (written there by the
# process that plans the study, read back by every later one: other cores, machines, cluster jobs).
PLANNED = planned.resolve(
    CHECKED,
    gpus_offered(),
    SOURCES,
    planner=internals.is_main_process(workflow),
)
CONFIG = PLANNED.config
# a study's own catalogue directories (the config's `catalog`) reach its jobs through their environment
if CONFIG["catalog"]:
    shell.prefix(
        f"export {catalog.CATALOG_ENV}={shlex.quote(catalog.catalog_variable())}; "
    )

STUDY = study.study_dir(CONFIG)
DATA = study.data_dir()
DATASETS = list(PLANNED.datasets)
APPENDIX = appendix.appendix_dir(CONFIG)
SENSITIVITY_CELLS = list(PLANNED.sensitivity_cells)
APPENDIX_PARTS = list(PLANNED.appendix_parts)
APPENDIX_DATASETS = [appendix.spec(CONFIG, p)["dataset"] for p in APPENDIX_PARTS]
ALGORITHMS = sorted(
    {a for d in DATASETS for a in PLANNED.algorithms[d]}
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
        for m in study.mirrors(CONFIG, os.environ.get(study.MIRRORS_ENV, ""))
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


def run_outputs(dataset, algorithm, seeds, name):
    """``name`` (metrics.json, history.csv) of every run of these seeds."""
    runs = study.runs_dir(CONFIG, dataset, algorithm)
    return [f"{study.run_dir(runs, seed)}/{name}" for seed in seeds]


def job_resources(dataset, algorithm, chunk):
    """Portable resources of a chunk's job; mem_mb and runtime grow with each retry."""
    first = jobs.resources(CONFIG, dataset, algorithm, len(chunk))
    return {
        "threads": first["threads"],
        "gpu": first["gpu"],
        "mem_mb": lambda wildcards, attempt: first["mem_mb"] * attempt,
        "runtime": lambda wildcards, attempt: first["runtime"] * attempt,
    }


def chunk_identities():
    """{(dataset, algorithm, chunk): the SHA-256 of the chunk's plan} (onepass.study.chunk_plans: its
    settings and members, never the device or the machine): a param of the chunk's job, so that a change of
    it, and nothing else, retrains the chunk."""
    out = {}
    for dataset in DATASETS:
        for algorithm in PLANNED.algorithms[dataset]:
            chunks = PLANNED.chunks[dataset, algorithm]
            contents = study.chunk_plans(CONFIG, dataset, algorithm, chunks)
            for chunk, content in zip(chunks, contents):
                text = json.dumps(content, sort_keys=True)
                out[dataset, algorithm, chunk] = hashlib.sha256(
                    text.encode()
                ).hexdigest()
    return out


def job_device(wildcards, resources):
    """The device a job trains on, decided where it runs: cuda where its gpu resource gives it one (no part
    of its runs' identity: untracked)."""
    return Untracked("cuda" if int(resources.get("gpu", 0)) > 0 else "cpu")


# ---- collection, figures, pages ----------------------------------------------------------------------------


def chunk_record(dataset, algorithm, chunk):
    """A chunk's plan, written by its training job: the one output of a chunk that the later rules ask for
    (asking for every run's files would make Snakemake match each of tens of thousands of paths against
    hundreds of rules: minutes of planning for the paper's study)."""
    return f"{STUDY}/sweep/{dataset}/chunks/{algorithm}/{study.chunk_name(chunk)}.json"


def dataset_chunk_records(dataset):
    """The chunk plans of every training job of a dataset."""
    return [
        chunk_record(dataset, algorithm, chunk)
        for algorithm in PLANNED.algorithms[dataset]
        for chunk in PLANNED.chunks[dataset, algorithm]
    ]


def dataset_chunks(wildcards):
    """An input function: the chunk plans of the wildcards' dataset (its runs come with them)."""
    return dataset_chunk_records(wildcards.dataset)


def cell_record(algorithm, cell):
    """A sensitivity cell's plan, copied next to its runs by its job: what later rules ask for."""
    return f"{appendix.cell_runs_dir(CONFIG, algorithm, cell)}/cell.json"


def lost_runs():
    """The records of runs deleted since their chunk trained (its plan is there, a run's files are not):
    Snakemake does not remake a missing output of a job whose other outputs are all there unless a rule
    asks for it by name, so that the target all does (and the chunk trains again, and everything after).
    """
    lost = [
        path
        for algorithm, cell in SENSITIVITY_CELLS
        if os.path.exists(cell_record(algorithm, cell))
        for path in appendix.cell_metrics(CONFIG, algorithm, cell)
        if not os.path.exists(path)
    ]
    for dataset, algorithm, chunk in PLANNED.jobs():
        if not os.path.exists(chunk_record(dataset, algorithm, chunk)):
            continue
        for name in paths.RUN_FILES:
            lost.extend(
                p
                for p in run_outputs(dataset, algorithm, chunk, name)
                if not os.path.exists(p)
            )
    return lost


def study_runs(wildcards):
    """What the target all asks for to have every run: every chunk's and sensitivity cell's plan (written by
    its job) and every deleted run's records (lost_runs)."""
    return [
        *(record for dataset in DATASETS for record in dataset_chunk_records(dataset)),
        *(cell_record(algorithm, cell) for algorithm, cell in SENSITIVITY_CELLS),
        *lost_runs(),
    ]


def plan_notice(wildcards):
    """An input function of the target `all` that adds nothing: once, as Snakemake plans the study (a dry run too),
    it logs what the study asks for (onepass.budget): runs, jobs, CPU- and GPU-hours."""
    if not PLAN_SHOWN:
        PLAN_SHOWN.append(True)
        logger.info(budget.text(CONFIG, PLANNED.chunks))
    return []


PLAN_SHOWN = []


def runs_dir(wildcards):
    """The dataset's runs directory."""
    return study.runs_dir(CONFIG, wildcards.dataset)


def figure_caption(wildcards):
    """The figure's caption (for the report), from onepass.figures."""
    return figures.caption(wildcards.figure, catalog.dataset_label(wildcards.dataset))
