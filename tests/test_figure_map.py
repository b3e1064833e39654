"""The README's map of the paper's figures and tables cannot rot: it has a row for each of the 13 functions
that the paper's paper_plots.py main calls (lines 919-937) and for each table of its write_all_tables
(470-535), and every output it names for the quick study is made by a job of the quick study's DAG (a dry
run's outputs) and shown in its report (an output a rule wraps in report())."""

import re

import pytest
import yaml
from snakemake.utils import update_config

from onepass import appendix, study
from test_pipeline import ROOT, local, snakemake

pytestmark = pytest.mark.pipeline

# paper_plots.py 919-937, in order
FUNCTIONS = ["sensitivity_study", "hypergradient_comparison", "cdfs", "long_horizon_fashion_mnist_cdfs",
             "loss_figures", "error_figures", "best_performance_over_time", "ray_statistics", "write_all_tables",
             "ray_best_evolution", "uci_sample_learning_rates", "large_scale_runtimes", "proof_of_concept"]
# write_all_tables' table_specs, paper_plots.py 470-535
TABLES = ["AverageResults_UCI", "AverageResults_uci_energy", "AverageResults_LargeScale",
          "AverageResults_Fashion-MNIST", "AverageErrors_LargeScale", "AverageMixed_Fashion-MNIST_Solo",
          "AverageMixed_Fashion-MNIST_LongDiffThroughOpt_Medium", "AverageResults_UCI_LongDiffThroughOpt_Standalone",
          "AverageResults_UCI_Energy_LongDiffThroughOpt_Full",
          "AverageMixed_Fashion-MNIST_LongDiffThroughOpt_Standalone", "AverageResults_UCI_BayesOpt",
          "AverageResults_Fashion-MNIST_BayesOpt", "AverageResults_Fashion-MNIST_NonBayesOpt",
          "AverageResults_UCI_Energy_ValidationProportions", "AverageResults_ASHA", "AverageResults_PBT"]
QUICK_COLUMN = "quick study's output"
PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)+\.(?:png|html|svg|tsv|md))`")


def map_tables(text: str) -> list[list[dict]]:
    """The Markdown tables of the README's map section, each a list of {column heading: cell}."""
    section = text.split("## The paper's figures and tables: a map", 1)[1].split("\n## ", 1)[0]
    found, current, header = [], None, None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = header = None
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        if header is None:
            header, current = cells, []
            found.append(current)
        elif not set("".join(cells)) <= set("- "):
            assert len(cells) == len(header), f"a row of the map has {len(cells)} cells, not {len(header)}: {line}"
            current.append(dict(zip(header, cells)))
    return found


def quick_paths(row: dict) -> list[str]:
    return PATH.findall(row[QUICK_COLUMN])


def test_map_has_a_row_for_each_function_and_table():
    functions, tables = map_tables((ROOT / "README.md").read_text())
    assert [r["#"] for r in functions] == [str(i) for i in range(1, 14)]
    assert [re.match(r"`(\w+)`", r["paper function (paper_plots.py)"]).group(1) for r in functions] == FUNCTIONS
    named = [name for r in tables for name in re.findall(r"`(Average[\w-]+)`", r["paper table"])]
    assert sorted(named) == sorted(TABLES)
    for row in [*functions, *tables]:
        assert quick_paths(row), f"a row names no output of the quick study: {row}"


def reported_patterns(config: dict) -> list[re.Pattern]:
    """Every output a rule wraps in report(), as a regex over paths (STUDY and APPENDIX the config's; a
    wildcard one path component)."""
    values = {"STUDY": study.study_dir(config), "APPENDIX": appendix.appendix_dir(config)}
    patterns = []
    for rules in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        for pattern in re.findall(r'report\(\s*f"([^"]+)"', rules.read_text()):
            parts = re.split(r"(\{\{\w+\}\}|\{\w+\})", pattern)
            regex = "".join("[^/]+" if p.startswith("{{") else re.escape(values[p[1:-1]]) if p.startswith("{")
                            else re.escape(p) for p in parts if p)
            patterns.append(re.compile(regex + "$"))
    return patterns


def test_every_quick_output_the_map_names_is_made_and_reported(tmp_path, copy_workflow):
    """Each path of the map's quick column, under results/quick/, is an output of a job of the quick study's
    dry run, and an output the report shows."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / "quick.yaml").read_text()))
    prefix = study.study_dir(config)
    assert prefix == "results/quick"
    workdir = copy_workflow(tmp_path / "workflow")
    proc = snakemake(workdir, "-n", *local("config/quick.yaml"))
    outputs = {p for line in re.findall(r"^\s+output: (.*)$", proc.stdout, re.M) for p in line.split(", ")}
    assert f"{prefix}/tables/paper_tables.html" in outputs   # the dry run's outputs were read
    reported = reported_patterns(config)
    named = sorted({path for rows in map_tables((ROOT / "README.md").read_text()) for r in rows
                    for path in quick_paths(r)})
    assert named
    not_made = [p for p in named if f"{prefix}/{p}" not in outputs]
    assert not not_made, f"the map names outputs the quick study does not make: {not_made}"
    not_shown = [p for p in named if not any(r.match(f"{prefix}/{p}") for r in reported)]
    assert not not_shown, f"the map names outputs the report does not show: {not_shown}"


def test_the_report_patterns_are_read():
    """The regexes of reported outputs, checked by hand on three paths and one that is not reported."""
    config = {"study": "quick"}
    reported = reported_patterns(config)
    for path in ("results/quick/figures/fashion_mnist/error_cdfs.png", "results/quick/appendix/figures/quality.png",
                 "results/quick/tables/paper_tables.html"):
        assert any(r.match(path) for r in reported), path
    assert not any(r.match("results/quick/figures/fashion_mnist/edf.svg") for r in reported)
