"""A study's jobs where they run: the device each dataset trains on (the GPUs it wants against those the run
offers) and each job's portable resources (threads, mem_mb, runtime, gpu) from the problem's size. Nothing
here changes what a run computes, nor which seeds train together (onepass.packing): only where it runs."""

from __future__ import annotations

import math

from . import catalog, memory, study

DEVICES = ("auto", "cpu", "cuda")


def gpus_wanted(config: dict, dataset: str) -> int:
    """GPUs a training job of ``dataset`` wants (``gpu``: per dataset, else ``default``, else 0)."""
    table = config["gpu"]
    return int(table.get(dataset, table.get("default", 0)))


def resolve_device(config: dict, gpus_offered: int, sources=None, strict: bool = True) -> str:
    """The study's device, ``cpu`` or ``cuda``, from the config's ``device`` and the GPUs this run offers
    (the ``gpu`` resource of the executor, or the CUDA devices found on this machine). ``auto`` puts the
    datasets that want a GPU on one where any is offered, and on the CPU elsewhere; ``cpu`` never uses one;
    ``cuda`` insists: with no GPU offered, a dataset that wants one stops the run (``strict``) with one line
    naming the key, the dataset and the fix."""
    mode = config.get("device", "auto")
    if mode not in DEVICES:
        study.fail("device", f"{mode!r} is not one of {', '.join(DEVICES)}", sources)
    wanting = [d for d in config["datasets"] if gpus_wanted(config, d)]
    if mode == "cuda" and strict and wanting and gpus_offered < 1:
        key = f"gpu.{wanting[0]}" if wanting[0] in config["gpu"] else "gpu.default"
        study.fail("device", f"cuda asks for a GPU for {wanting[0]} ({key}), but this run offers none "
             "(no CUDA device here and no gpu resource): run where one is (--resources gpu=N, a GPU "
             "partition in profiles/slurm), or set device: auto or cpu", sources)
    if mode == "cpu" or gpus_offered < 1:
        return "cpu"
    return "cuda"


def device(config: dict, dataset: str) -> str:
    """``cuda`` for a dataset that wants a GPU (``gpu``) when the study's device (``device``, resolved by
    :func:`resolve_device`) is ``cuda``, else ``cpu``. An unresolved ``auto`` means no GPU is known to be
    offered: ``cpu``."""
    return "cuda" if config.get("device") == "cuda" and gpus_wanted(config, dataset) else "cpu"


def resources(config: dict, dataset: str, algorithm: str, n_members: int, attempt: int = 1,
              run: dict | None = None) -> dict:
    """threads, mem_mb, runtime (minutes) and gpu of one job training ``n_members`` seeds: estimated from the
    problem's size (:mod:`onepass.memory`; ``run``: the resolved settings, if not the config's) unless the
    config's ``resources`` sets them; memory and time grow with each retry (``attempt``), so a job killed for
    either is resubmitted larger."""
    given = given_resources(config, dataset)
    run = run or study.settings(config, dataset, algorithm)
    entry = catalog.algorithm(algorithm)
    estimate = memory.job_estimate(dataset, run, n_members, device(config, dataset), entry.search,
                                   threads=given.get("threads", 1))
    mem_mb = given.get("mem_mb", estimate["mem_mb"])
    runtime = given.get("runtime", estimate["runtime"])
    on_gpu = device(config, dataset) == "cuda"
    return {"threads": given.get("threads", 1), "mem_mb": int(math.ceil(mem_mb * attempt)),
            "runtime": int(math.ceil(runtime * attempt)), "gpu": gpus_wanted(config, dataset) if on_gpu else 0}


def given_resources(config: dict, dataset: str) -> dict:
    """The config's ``resources`` of ``dataset``: its own entry over ``default``."""
    return {**config["resources"].get("default", {}), **config["resources"].get(dataset, {})}


def member_seconds(config: dict, dataset: str, algorithm: str) -> float:
    """Estimated seconds one member of (dataset, algorithm) trains (a search: one repetition) on the threads
    the config gives its jobs (:func:`onepass.memory.member_seconds`)."""
    run = study.settings(config, dataset, algorithm)
    return memory.member_seconds(dataset, run, catalog.algorithm(algorithm).search,
                                 given_resources(config, dataset).get("threads", 1))


def priority(config: dict, dataset: str, algorithm: str, n_members: int) -> int:
    """A training job's scheduling priority: its estimated seconds of training (:func:`onepass.memory.
    member_seconds` times its members), so that the longest jobs start first (longest-processing-time
    order) and a run on a few cores does not end waiting on one long job started last (the UCI Energy
    study on 2 cores: Diff-through-Opt's 148 s job had started third of nine). Only the order changes."""
    return int(math.ceil(member_seconds(config, dataset, algorithm) * max(n_members, 1)))
