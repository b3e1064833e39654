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


def validate(config: dict, sources=None) -> dict:
    """The study config checked as the workflow checks it: onepass.study, then the appendix grids."""
    config = study.validate(config, SCHEMA, sources)
    appendix.check(config, sources)
    return config


def config(**appendix_part) -> dict:
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["appendix"] = {**base["appendix"], **appendix_part}
    return validate(base)


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
        validate(base, [("config/config.yaml", base)])


def test_appendix_can_be_left_out():
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base["appendix"] = None
    cfg = validate(base)
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
    cosine, ratio = quality.cosine_and_ratio([1.0, 0.0], [1.0, 1.0])
    assert cosine == pytest.approx(1 / math.sqrt(2)) and ratio == pytest.approx(1 / math.sqrt(2))
    pairs = {"lr": [(1, 2), (3, 2), (-1, 1)], "weight_decay": [(2, 2), (2, 2), (1, 1)]}
    rows = [{"update_interval": 2, "lookback": 2, "hyper_step": 0, "seed": s, "hyperparameter": n, "ours": o,
             "exact": e} for n, values in pairs.items() for s, (o, e) in enumerate(values)]
    summary = {r["quantity"]: r for r in quality.summarise(rows)}
    assert set(summary) == {"cosine_similarity", "magnitude_ratio", "relative_error_lr", "relative_error_weight_decay"}
    assert summary["relative_error_lr"]["mean"] == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    assert summary["relative_error_lr"]["median"] == 0.5 and summary["relative_error_weight_decay"]["mean"] == 0
    # member 0: ours (1, 2) against exact (2, 2); member 2: (-1, 1) against (1, 1), orthogonal
    cosines = [quality.cosine_and_ratio([1, 2], [2, 2])[0], quality.cosine_and_ratio([3, 2], [2, 2])[0], 0.0]
    assert summary["cosine_similarity"]["mean"] == pytest.approx(sum(cosines) / 3)
    assert summary["cosine_similarity"]["values"] == 3


def test_quality_compares_against_the_exact_hypergradient(uci_energy_dir):
    """With one Neumann term (the direct term) the two hypergradients are the same derivative at every step;
    with three terms through three steps they differ, but point the same way."""
    cfg = config(quality={"dataset": "uci_energy", "initialisations": 3, "algorithm": "Ours_LR_Momentum",
                          "update_intervals": [1, 3], "lookbacks": [1, 3], "hyperparameter_steps": 2})
    rows = quality.compare(cfg, uci_energy_dir)
    assert len(rows) == 3 * 2 * 3 * 3   # cells (1,1), (3,1), (3,3) x 2 steps x 3 members x 3 hyperparameters
    summary = {(r["update_interval"], r["lookback"], r["quantity"]): r for r in quality.summarise(rows)}
    for T in (1, 3):
        assert summary[(T, 1, "cosine_similarity")]["mean"] == pytest.approx(1.0, abs=1e-6)
        assert summary[(T, 1, "magnitude_ratio")]["median"] == pytest.approx(1.0, abs=1e-4)
        assert summary[(T, 1, "relative_error_lr")]["mean"] < 1e-4
    deep = summary[(3, 3, "relative_error_lr")]["mean"]
    assert 1e-4 < deep < 10 and summary[(3, 3, "cosine_similarity")]["mean"] > 0.5
    # at T = 1 the first step's momentum buffer is still zero, so its exact momentum derivative is zero
    first = [r for r in rows if r["update_interval"] == 1 and r["hyper_step"] == 0 and r["hyperparameter"] == "momentum"]
    assert all(r["exact"] == 0 for r in first)
