"""Every use the workflow makes of Snakemake's internals (attributes of its Workflow object that are not a
documented API), in one place, each with a test of its own (tests/test_snakemake_internals.py): when a
Snakemake release changes one, one function here changes. The onepass package knows nothing of Snakemake;
the Snakefile reaches it through these functions and onepass.planned."""

import contextlib
import os
from pathlib import Path

import yaml

from snakemake.resources import Resource


def config_sources(workflow):
    """The config files in the order Snakemake merged them (the Snakefile's ``configfile:``, then
    --configfile's), then --config: for naming the file that sets a bad key. Each is (name, mapping, given on
    the command line). Reads ``workflow.overwrite_configfiles``, ``workflow.configfiles`` and
    ``workflow.config_settings.config``."""
    given = [Path(p).absolute() for p in workflow.overwrite_configfiles]
    default = [p for p in workflow.configfiles if Path(p).absolute() not in given]
    sources = []
    for path in [*default, *given]:
        with contextlib.suppress(OSError, yaml.YAMLError):  # Snakemake reports those itself
            data = yaml.safe_load(Path(path).read_text()) or {}
            sources.append((os.path.relpath(path), data, Path(path).absolute() in given))
    given_here = command_line_config(workflow)
    if given_here:
        sources.append(("--config", given_here, True))
    return sources


def command_line_config(workflow) -> dict:
    """The mapping --config made (its nested values as YAML's BaseLoader reads them: text), or {}:
    ``workflow.config_settings.config``."""
    return dict(workflow.config_settings.config or {})


def declared_gpus(workflow):
    """The ``gpu`` resource the profile or --resources declares (``workflow.global_resources``), or None."""
    declared = workflow.global_resources.get("gpu")
    value = getattr(declared, "value", declared)  # a Resource in Snakemake 9, a number before
    return None if value is None else int(value)


def offer_gpus(workflow, count: int) -> None:
    """Declare ``count`` GPUs as the ``gpu`` resource (``workflow.register_resource``), so that jobs asking
    for one share them one at a time."""
    workflow.register_resource("gpu", Resource("gpu", count))


def is_main_process(workflow) -> bool:
    """Whether this process plans the study (not a job's own Snakemake, e.g. on a cluster node):
    ``workflow.is_main_process``."""
    return bool(workflow.is_main_process)
