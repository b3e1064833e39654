"""The appendix studies: the grids laid out as the paper's code, cells trained as chunk plans, the table's
statistics, and the hypergradient-quality comparison against the exact hypergradient."""

import json
import math

import pytest
import yaml

from onepass import appendix, quality, study
from onepass.settings import load_settings
from test_pipeline import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def config(**appendix_part) -> dict:
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["appendix"] = {**base["appendix"], **appendix_part}
    return study.validate(base, SCHEMA)


def test_full_sensitivity_grid_is_the_papers():
    """100 cells of the paper's method (K = 1..10 for every T, K > T included), 55 of Diff-through-Opt
    (K <= T), one Random cell; every cell 400 hyperparameter steps, so T x 400 weight steps."""
    cfg = config()
    cells = appendix.sensitivity_cells(cfg)
    by_algorithm = {a: [c for b, c in cells if b == a] for a in ("Ours_LR_Momentum", "DiffThroughOpt", "Random")}
    assert [len(v) for v in by_algorithm.values()] == [100, 55, 1] and len(cells) == 156
    assert "T1_K10" in by_algorithm["Ours_LR_Momentum"] and "T1_K10" not in by_algorithm["DiffThroughOpt"]
    ours = load_settings("uci_energy", "Ours_LR_Momentum", appendix.cell_overrides(cfg, "Ours_LR_Momentum", "T3_K7"))
    assert (ours["update_interval"], ours["neumann_terms"], ours["hyperparameter_steps"]) == (3, 7, 400)
    dto = load_settings("uci_energy", "DiffThroughOpt", appendix.cell_overrides(cfg, "DiffThroughOpt", "T6_K4"))
    assert (dto["update_interval"], dto["unroll_steps"], dto["hyperparameter_steps"]) == (6, 4, 400)
    random = load_settings("uci_energy", "Random", appendix.cell_overrides(cfg, "Random", "baseline"))
    assert random["hyperparameter_steps"] * random["update_interval"] == 4000
    plan = appendix.cell_plan(cfg, "Ours_LR_Momentum", "T3_K7")
    assert [m["seed"] for m in plan["members"]] == list(range(100))
    # the same initialisations as the study's runs of the dataset
    assert plan["members"][5] == study.member_of(cfg, "uci_energy", "Ours_LR_Momentum", 5)
    assert plan["overrides"]["neumann_terms"] == 7 and plan["settings"]["update_interval"] == 3
    assert len(appendix.quality_cells(cfg)) == 55


@pytest.mark.parametrize("part, change, key", [
    ("sensitivity", {"algorithms": ["Random"]}, "appendix.sensitivity"),      # no look-back to vary
    ("sensitivity", {"algorithms": ["ASHA"]}, "appendix.sensitivity"),        # a search
    ("sensitivity", {"dataset": "uci_nowhere"}, "appendix.sensitivity.dataset"),
    ("quality", {"algorithm": "DiffThroughOpt"}, "appendix.quality"),         # not a Neumann method
    ("quality", {"lookbacks": [0]}, "appendix.quality.lookbacks.0"),
])
def test_bad_appendix_config_names_its_key(part, change, key):
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["appendix"][part] = {**base["appendix"][part], **change}
    with pytest.raises(study.StudyConfigError, match=f"config key '{key}'"):
        study.validate(base, SCHEMA, [("config/config.yaml", base)])


def test_appendix_can_be_left_out():
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["appendix"] = None
    cfg = study.validate(base, SCHEMA)
    assert not appendix.enabled(cfg, "sensitivity") and not appendix.enabled(cfg, "quality")


def test_sensitivity_table_takes_the_median_of_the_runs_that_did_not_diverge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config(sensitivity={"dataset": "uci_energy", "initialisations": 4, "algorithms": ["Ours_LR_Momentum"],
                              "update_intervals": [2], "lookbacks": [1], "hyperparameter_steps": 3,
                              "baseline": {"algorithm": "Random"}})
    finals = {("Ours_LR_Momentum", "T2_K1"): [3.0, 1.0, 100.0, None], ("Random", "baseline"): [5.0, 6.0, 7.0, 8.0]}
    for (algorithm, cell), values in finals.items():
        for path, value in zip(appendix.cell_metrics(cfg, algorithm, cell), values):
            (tmp_path / path).parent.mkdir(parents=True)
            metrics = {"test_metric": value if value is not None else float("nan"), "diverged": value is None}
            (tmp_path / path).write_text(json.dumps(metrics))
    rows = {r["cell"]: r for r in appendix.sensitivity_rows(cfg)}
    assert (rows["T2_K1"]["runs"], rows["T2_K1"]["diverged"]) == (4, 1)
    assert rows["T2_K1"]["median_test_metric"] == 3.0 and rows["T2_K1"]["mean_test_metric"] == pytest.approx(104 / 3)
    assert rows["baseline"]["median_test_metric"] == 6.5 and rows["baseline"]["update_interval"] is None


def test_quality_statistics():
    assert quality.relative_error(0.9, 1.0) == pytest.approx(0.1)
    assert quality.relative_error(-1.0, 1.0) == pytest.approx(2.0)
    assert math.isnan(quality.relative_error(1.0, 0.0))
    rows = [{"update_interval": 2, "lookback": 2, "seed": s, "hyperparameter": "lr", "ours": o, "exact": e,
             "relative_error": quality.relative_error(o, e)} for s, (o, e) in enumerate([(1, 2), (3, 2), (-1, 1)])]
    (summary,) = quality.summarise(rows)
    assert summary["mean_relative_error"] == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    assert summary["median_relative_error"] == 0.5 and summary["same_sign"] == pytest.approx(2 / 3)


def test_quality_compares_against_the_exact_hypergradient(uci_energy_dir):
    """With one Neumann term (the direct term) the two hypergradients are the same derivative; with three
    terms through three steps they differ, but not by orders of magnitude."""
    cfg = config(quality={"dataset": "uci_energy", "initialisations": 3, "algorithm": "Ours_LR_Momentum",
                          "update_intervals": [1, 3], "lookbacks": [1, 3]})
    rows = quality.compare(cfg, uci_energy_dir)
    assert len(rows) == 3 * 3 * 3   # cells (1,1), (3,1), (3,3) x 3 members x 3 hyperparameters
    for row in rows:
        if row["lookback"] == 1 and math.isfinite(row["relative_error"]):
            assert row["relative_error"] < 1e-4, row
    deep = [r["relative_error"] for r in rows if r["lookback"] == 3]
    assert all(1e-4 < e < 10 for e in deep), deep
    # T = 1: the momentum buffer is still zero, so the exact momentum derivative is zero (no ratio)
    assert all(math.isnan(r["relative_error"]) for r in rows if r["update_interval"] == 1
               and r["hyperparameter"] == "momentum")
