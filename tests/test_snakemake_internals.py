"""workflow/rules/snakemake_internals.py against the installed Snakemake: one test for each use the workflow
makes of Snakemake's internals, each read in a real (dry) run of a small Snakefile, so that a Snakemake
release that changes one fails here by name."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.pipeline

SNAKEFILE = """
import json, sys
sys.path.insert(0, {rules!r})
import snakemake_internals as internals

configfile: "base.yaml"

found = {{"sources": [[n, d, given] for n, d, given in internals.config_sources(workflow)],
          "declared": internals.declared_gpus(workflow),
          "main": internals.is_main_process(workflow),
          "command_line": internals.command_line_config(workflow)}}
if {offer}:
    internals.offer_gpus(workflow, 3)
    found["after_offer"] = internals.declared_gpus(workflow)
print("INTERNALS " + json.dumps(found))

rule all:
    output: "done.txt"
    resources: gpu=1
    shell: "touch {{output}}"
"""


def dry_run(tmp_path, *args, offer=False):
    """The report the small Snakefile prints in a dry run with ``args``."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(rules=str(ROOT / "workflow" / "rules"), offer=offer))
    (tmp_path / "base.yaml").write_text("a: 1\n")
    (tmp_path / "given.yaml").write_text("b: 2\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=tmp_path,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("INTERNALS "))
    return json.loads(line.split(" ", 1)[1])


def test_config_sources_name_the_files_in_merge_order_then_config(tmp_path):
    """workflow.configfiles, workflow.overwrite_configfiles, workflow.config_settings.config"""
    report = dry_run(tmp_path, "--configfile", "given.yaml", "--config", "key=3")
    assert report["sources"] == [["base.yaml", {"a": 1}, False], ["given.yaml", {"b": 2}, True],
                                 ["--config", {"key": 3}, True]]
    assert dry_run(tmp_path)["sources"] == [["base.yaml", {"a": 1}, False]]


def test_command_line_config_is_what_config_set_as_text(tmp_path):
    """workflow.config_settings.config: --config's mapping, nested values as text (coerced by onepass.config_text)"""
    report = dry_run(tmp_path, "--config", "key=3", 'nested={"steps": 2000}')
    assert report["command_line"] == {"key": 3, "nested": {"steps": "2000"}}
    assert dry_run(tmp_path)["command_line"] == {}


def test_declared_gpus_reads_the_gpu_resource(tmp_path):
    """workflow.global_resources"""
    assert dry_run(tmp_path, "--resources", "gpu=2")["declared"] == 2
    assert dry_run(tmp_path)["declared"] is None


def test_offer_gpus_declares_the_resource(tmp_path):
    """workflow.register_resource"""
    assert dry_run(tmp_path, offer=True)["after_offer"] == 3


def test_the_planning_process_is_the_main_process(tmp_path):
    """workflow.is_main_process (a cluster job's own Snakemake is not: tests/test_slurm.py)"""
    assert dry_run(tmp_path)["main"] is True
