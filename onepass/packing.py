"""A study's packing: which seeds of each (dataset, algorithm) train together as one job (a *chunk*).

The packing is decided once, when a study is first planned, and written per dataset under the study's
directory (``results/<study>/packing/<dataset>.json``); every later plan reads it back, whatever its cores,
cache, GPUs or executor (a SLURM job on a compute node too). It is no part of a run's identity (a run is
its dataset, algorithm, seed and settings): it only says in what company a run trains. Growing a dataset's
``initialisations`` packs only the new seeds; a changed ``members_per_job`` (or ``python -m onepass.packing
repack``) repacks only the runs that have not finished.

A chunk's size, where ``members_per_job`` is ``auto``, comes from the estimated training time of a member
(:func:`onepass.jobs.member_seconds`): as many as fit :data:`JOB_TARGET_S` of training, so that a job's
start-up is a small share of it and the paper's study stays a few hundred jobs.

    python -m onepass.packing repack results/<study>/packing/<dataset>.json [--all]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import jobs, paths, study

FORMAT = 1
AUTO = "auto"
# a job trains for about this long on its threads (estimated as its runtime request is, without the safety
# margin): long enough that its start-up (Python, torch, the data: about 3 s) is a small share of it, short
# enough that a killed job loses little, and the paper's study stays under 1,000 jobs (README, "Planning")
JOB_TARGET_S = 3600.0
DIRECTORY = "packing"


class PackingError(ValueError):
    """A packing file that cannot be read or does not fit the study; the message names the file."""


def path(config: dict, dataset: str) -> Path:
    """The dataset's packing file: results/<study>/packing/<dataset>.json."""
    return Path(study.study_dir(config)) / DIRECTORY / f"{dataset}.json"


def requested(config: dict, dataset: str):
    """The config's ``members_per_job`` of a dataset (else its ``default``, else ``auto``): recorded with
    the packing, so that a change of it repacks the unfinished runs."""
    table = config["members_per_job"]
    return table.get(dataset, table.get("default", AUTO))


def size(config: dict, dataset: str, algorithm: str) -> int:
    """Members of one job of (dataset, algorithm): ``members_per_job`` where a number, else (``auto``) as
    many as train for :data:`JOB_TARGET_S` (estimated), at least one; a search's repetitions alike (each is a sequence of trainings). Nothing about the machine enters it."""
    value = requested(config, dataset)
    if value != AUTO:
        return int(value)
    return max(1, math.floor(JOB_TARGET_S / max(jobs.member_seconds(config, dataset, algorithm), 1e-9)))


def cut(seeds: list[int], per_job: int) -> list[list[int]]:
    """``seeds`` (in order) cut into as few chunks of at most ``per_job`` as possible, of equal size (50
    seeds, at most 30 a job: 25 and 25)."""
    if not seeds:
        return []
    count = math.ceil(len(seeds) / max(per_job, 1))
    small, extra = divmod(len(seeds), count)
    out, start = [], 0
    for i in range(count):
        n = small + (1 if i < extra else 0)
        out.append(list(seeds[start:start + n]))
        start += n
    return out


def finished(config: dict, dataset: str, algorithm: str, seed: int) -> bool:
    """Whether a run has finished: its metrics.json and history.csv exist."""
    return paths.finished(paths.run_dir(study.runs_dir(config, dataset, algorithm), seed))


def extend(config: dict, dataset: str, old: dict | None, is_finished=None) -> dict:
    """The dataset's packing: ``old`` (as read from its file, or None) kept for every run it packs, with
    the seeds it does not pack cut into new chunks (:func:`size`). Where the config's ``members_per_job``
    differs from the one ``old`` was packed for, only the chunks whose runs have all finished
    (``is_finished(algorithm, seed)``) are kept. A chunk holding a seed the study no longer asks for is
    dropped (its other seeds are packed again)."""
    is_finished = is_finished or (lambda a, s: finished(config, dataset, a, s))
    wanted = requested(config, dataset)
    old = old or {}
    repack = old.get("members_per_job", wanted) != wanted
    out = {"format": FORMAT, "study": config["study"], "dataset": dataset, "members_per_job": wanted,
           "chunks": {}}
    for algorithm in study.algorithms(config, dataset):
        seeds = study.seeds(config, dataset, algorithm)
        allowed = set(seeds)
        kept = [list(c) for c in old.get("chunks", {}).get(algorithm, [])
                if c and set(c) <= allowed and not (repack and not all(is_finished(algorithm, s) for s in c))]
        packed = {s for c in kept for s in c}
        new = cut([s for s in seeds if s not in packed], size(config, dataset, algorithm))
        out["chunks"][algorithm] = sorted(kept + new)
    return out


def read(file) -> dict | None:
    """A packing file's content, or None where there is none (a PackingError if it is not a packing)."""
    file = Path(file)
    if not file.exists():
        return None
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise PackingError(f"cannot read the packing {file}: {err}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT or not isinstance(content.get("chunks"), dict):
        raise PackingError(f"{file} is not a packing of this version (format {FORMAT}): move it away to pack "
                           "the study anew")
    return content


def write(file, content: dict) -> None:
    """Write a packing atomically (a reader never sees half a file)."""
    from .atomic import atomic_write

    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda tmp: tmp.write_text(json.dumps(content, indent=1) + "\n"))


def resolve(config: dict, dataset: str, save: bool) -> dict:
    """The dataset's packing: its file, extended where the study asks for runs it does not pack
    (:func:`extend`), and written back when it changed and ``save`` (the process that plans the study; a
    cluster job only reads it)."""
    file = path(config, dataset)
    old = read(file)
    content = extend(config, dataset, old)
    if save and content != old:
        write(file, content)
    return content


def repack(file, everything: bool = False, is_finished=None) -> dict:
    """Drop from a packing file every chunk with a run that has not finished (``everything``: every
    chunk), so that the next plan packs those runs anew; returns the new content."""
    content = read(file)
    if content is None:
        raise PackingError(f"no packing {file}")
    if is_finished is None:
        runs = Path(file).resolve().parent.parent / "runs" / content["dataset"]
        is_finished = lambda a, s: paths.finished(paths.run_dir(runs / a, s))  # noqa: E731
    content = {**content, "chunks": {a: [c for c in chunks if not everything and all(is_finished(a, s) for s in c)]
                                     for a, chunks in content["chunks"].items()}}
    write(file, content)
    return content


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.packing", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("repack", help="drop the chunks with unfinished runs, so the next plan packs them anew")
    r.add_argument("packing", nargs="+", help="results/<study>/packing/<dataset>.json")
    r.add_argument("--all", action="store_true",
                   help="drop every chunk (finished runs whose chunk changes are then trained again)")
    args = p.parse_args(argv)
    try:
        for file in args.packing:
            content = repack(file, args.all)
            kept = sum(len(c) for c in content["chunks"].values())
            print(f"{file}: {kept} chunks kept; the others are packed anew by the next plan")
    except PackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
