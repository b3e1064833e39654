"""Plan files, as the jobs read them: a dataset's plan (every algorithm's seeds, chunks and settings, every
seed's initialisation) and a chunk's plan (one job's members), written by onepass.study; references to the
paper's initialisation files resolved into values when a chunk's plan is written."""

from __future__ import annotations

import json
from pathlib import Path

from . import catalog, sweep
from .settings import HYPERPARAMETERS, ConfigError

PLAN_FORMAT = 1


def resolve_chunk_plan(content: dict, data_dir) -> dict:
    """A chunk plan with the references to the paper's initialisation files replaced by their values, read
    from the files (fetched and verified into ``data_dir``); a plan without references is returned as is."""
    if "init_files" not in content:
        return content
    from . import data

    try:
        inits = data.fetch_inits(catalog.dataset(content["dataset"]).base, data_dir)
    except data.DataError as err:
        raise ConfigError(f"the initialisation files of {content['dataset']}: {err}") from None
    members = [{**sweep.resolve({k: v for k, v in m.items() if k != "settings"}, inits),
                "settings": sweep.resolve(m["settings"], inits)} for m in content["members"]]
    return {**content, "members": members}


def write_chunk_plan(content: dict, data_root, path) -> None:
    """Write a chunk plan, its references to the paper's initialisation files resolved
    (:func:`resolve_chunk_plan`), as JSON."""
    from .records import atomic_write

    text = json.dumps(resolve_chunk_plan(content, data_root), indent=1, sort_keys=True)
    atomic_write(Path(path), lambda tmp: tmp.write_text(f"{text}\n"))


def read_plan(path) -> dict:
    """A plan (a dataset's, or a chunk's) written by onepass.study (a ConfigError if it is not one)."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the plan {path}: {err}") from None
    if not isinstance(content, dict) or content.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{path} is not a plan of this version (format {PLAN_FORMAT}): rerun the sweep rule")
    return content


def planned(plan_: dict, algorithm: str) -> dict:
    """An algorithm's entry of a plan (a ConfigError naming it if the plan has none)."""
    if algorithm not in plan_["algorithms"]:
        raise ConfigError(f"the plan of {plan_['dataset']} has no algorithm {algorithm!r}; "
                          f"it has {', '.join(plan_['algorithms'])}")
    return plan_["algorithms"][algorithm]


def member(plan_: dict, algorithm: str, seed: int) -> dict:
    """A seed's member of an algorithm: its initial hyperparameters and per-member settings."""
    entry = planned(plan_, algorithm)
    rows = plan_["initialisations"]
    if not 0 <= seed < len(rows):
        raise ConfigError(f"the plan of {plan_['dataset']} has no seed {seed}")
    row = rows[seed]
    return {"seed": seed, **{k: float(row[k]) for k in HYPERPARAMETERS},
            "settings": {k: row[k] for k in entry["member_settings"]}}


def expected_settings(plan_: dict, algorithm: str, seed: int) -> dict:
    """The identity settings a finished run of this seed must have recorded."""
    return {**planned(plan_, algorithm)["settings"], **member(plan_, algorithm, seed)["settings"]}
