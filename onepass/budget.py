"""What a study will ask for, before it runs: per dataset its runs and training jobs, the appendix's jobs,
and the CPU- and GPU-hours those jobs request (the estimates of onepass.memory behind every job's
``runtime``, or the config's ``resources``). The workflow prints it when it plans a study, so a dry run of
thousands of jobs still reads in a few lines."""

from __future__ import annotations

from . import appendix, jobs, study


def job_rows(config: dict, chunks: dict) -> list[dict]:
    """One row per kind of job: dataset (or appendix part), jobs, runs, and the hours requested; ``chunks``:
    the study's packing, {(dataset, algorithm): [seeds of one job, ...]} (onepass.planned)."""
    rows = []
    for dataset in config["datasets"]:
        row = empty_row(dataset)
        for algorithm in study.algorithms(config, dataset):
            for chunk in chunks[dataset, algorithm]:
                add(row, jobs.resources(config, dataset, algorithm, len(chunk)), len(chunk))
        rows.append(row)
    if appendix.enabled(config, appendix.SENSITIVITY):
        row = empty_row("appendix: sensitivity")
        n = len(appendix.sensitivity_seeds(config))
        for algorithm, cell in appendix.sensitivity_cells(config):
            add(row, appendix.cell_resources(config, algorithm, cell), n)
        rows.append(row)
    if appendix.enabled(config, appendix.QUALITY):
        row = empty_row("appendix: quality")
        add(row, appendix.quality_resources(config), appendix.spec(config, appendix.QUALITY)["initialisations"])
        rows.append(row)
    return rows


def empty_row(what: str) -> dict:
    """A row of :func:`job_rows` with nothing counted yet."""
    return {"what": what, "jobs": 0, "runs": 0, "gpu_jobs": 0, "cpu_hours": 0.0, "gpu_hours": 0.0}


def add(row: dict, resources: dict, runs: int) -> None:
    """Count one job of these resources (runtime in minutes) into ``row``."""
    hours = resources["runtime"] / 60
    row["jobs"] += 1
    row["runs"] += runs
    if resources["gpu"]:
        row["gpu_jobs"] += 1
        row["gpu_hours"] += hours * resources["gpu"]
    else:
        row["cpu_hours"] += hours * resources["threads"]


def text(config: dict, chunks: dict) -> str:
    """The plan in a few lines: totals first, then one line per dataset and appendix part (``chunks`` as
    :func:`job_rows`)."""
    rows = job_rows(config, chunks)
    total = {k: sum(r[k] for r in rows) for k in ("jobs", "runs", "gpu_jobs", "cpu_hours", "gpu_hours")}
    lines = [f"study {config['study']} (device {config.get('device', 'auto')}): {total['runs']:,} runs in "
             f"{total['jobs']:,} training jobs ({total['gpu_jobs']:,} on a GPU), asking for about "
             f"{total['cpu_hours']:,.1f} CPU-hours and {total['gpu_hours']:,.1f} GPU-hours (requested "
             "runtimes, an upper bound)"]
    for r in rows:
        lines.append(f"  {r['what']}: {r['runs']:,} runs, {r['jobs']:,} jobs ({r['gpu_jobs']:,} GPU), "
                     f"{r['cpu_hours']:,.1f} CPU-h, {r['gpu_hours']:,.1f} GPU-h")
    return "\n".join(lines)
