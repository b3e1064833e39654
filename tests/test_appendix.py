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
    # by hand: member 0, ours (1, 2) against exact (2, 2): 6 / (sqrt 5 sqrt 8); member 1, (3, 2) against
    # (2, 2): 10 / (sqrt 13 sqrt 8); member 2, (-1, 1) against (1, 1): orthogonal, 0
    cosines = [6 / math.sqrt(40), 10 / math.sqrt(104), 0.0]
    assert summary["cosine_similarity"]["mean"] == pytest.approx(sum(cosines) / 3)
    # norm ratios sqrt 5 / sqrt 8 = 0.79, sqrt 13 / sqrt 8 = 1.27 and 1: median 1
    assert summary["magnitude_ratio"]["median"] == pytest.approx(1.0)
    assert summary["magnitude_ratio"]["mean"] == pytest.approx((math.sqrt(5 / 8) + math.sqrt(13 / 8) + 1) / 3)
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


@pytest.mark.parametrize("terms", [1, 3])
def test_step_with_reference_is_a_step_and_returns_the_exact_hypergradient_beside_it(terms,
                                                                                       uci_energy_dir):
    """The hypergradient-quality study's step: the population moves exactly as by step(); the exact
    hypergradient through the last ``terms`` steps comes from the same weights and batches, so with one
    Neumann term (the direct term only) the two are one and the same derivative."""
    import torch

    from onepass import data
    from onepass.population import Member, Population

    dataset = data.load("uci_energy", uci_energy_dir)
    group = [Member(0, 1e-2, 1e-4, 0.5), Member(1, 3e-2, 1e-3, 0.3)]
    settings = load_settings("uci_energy", "Ours_LR_Momentum", {"update_interval": 3, "neumann_terms": terms})
    pops = [Population(settings, dataset, group, torch.device("cpu")) for _ in range(2)]
    for _ in range(2):
        pops[0].step()
        out = quality.step_with_reference(pops[1])
    for a, b in zip(pops[0].params, pops[1].params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, value in pops[0].hypers.trainable().items():
        torch.testing.assert_close(value, pops[1].hypers.trainable()[name], rtol=0, atol=0)
    assert set(out["neumann"]) == set(out["exact"]) == {"lr", "weight_decay", "momentum"}
    for name in out["neumann"]:
        ours, exact = out["neumann"][name], out["exact"][name]
        assert bool((exact != 0).all())
        if terms == 1:
            torch.testing.assert_close(ours, exact, rtol=1e-4, atol=1e-9)
        else:   # a truncated series through three steps: near, not equal
            assert not torch.allclose(ours, exact, rtol=1e-4, atol=1e-9)
    bad = load_settings("uci_energy", "Ours_LR_Momentum", {"update_interval": 2, "neumann_terms": 3})
    with pytest.raises(ValueError, match="neumann_terms"):
        quality.step_with_reference(Population(bad, dataset, group, torch.device("cpu")))


def test_the_papers_quality_is_the_first_updates_relative_error():
    """abs(true - ours) / abs(true) of each run's first update, averaged over the runs (NaN left out), per
    cell, lr and weight decay."""
    rows = [{"update_interval": 2, "lookback": 1, "seed": s, "hyperparameter": n, "ours": o, "exact": e}
            for n, pairs in {"lr": [(0.8e-3, 1e-3), (-3e-4, 2e-4), (1e-5, 0.0)],
                             "weight_decay": [(5e-6, 4e-6), (2e-6, 2e-6), (math.nan, 1e-6)]}.items()
            for s, (o, e) in enumerate(pairs)]
    summary = {r["quantity"]: r for r in quality.paper_summary(rows)}
    assert set(summary) == {"relative_error_lr", "relative_error_weight_decay"}
    # lr: 0.2e-3 / 1e-3 = 0.2 and 5e-4 / 2e-4 = 2.5 (a zero true update counts as NaN); weight decay 0.25, 0
    assert summary["relative_error_lr"]["mean"] == pytest.approx((0.2 + 2.5) / 2)
    assert summary["relative_error_lr"]["values"] == 2
    assert summary["relative_error_weight_decay"]["mean"] == pytest.approx(0.25 / 2)


def test_the_papers_quality_on_a_tiny_problem_against_a_hand_computation(uci_energy_dir):
    """Matched runs of Ours (WD+LR+M) and Diff-through-Opt take their first hyperparameter step; by hand,
    Adam's first step moves each unconstrained hyperparameter (log10 lr, log10 weight decay) by
    -hyper_lr * g / (abs(g) + 1e-8), g its hypergradient, which the direct comparison gives for the same
    weights and batches; the relative error of the two natural-unit updates follows."""
    cfg = config(quality={"dataset": "uci_energy", "initialisations": 3, "algorithm": "Ours_LR_Momentum",
                          "update_intervals": [3], "lookbacks": [1, 3], "hyperparameter_steps": 1})
    rows = quality.first_updates(cfg, uci_energy_dir)
    assert len(rows) == 2 * 3 * 2   # cells (3,1), (3,3) x 3 runs x lr, weight decay
    grads = quality.compare(cfg, uci_energy_dir)   # the hypergradients of the first step, ours and exact
    hyper_lr = load_settings("uci_energy", "Ours_LR_Momentum")["hyper_lr"]
    assert hyper_lr == load_settings("uci_energy", "DiffThroughOpt")["hyper_lr"]
    for row in rows:
        g = next(r for r in grads if (r["update_interval"], r["lookback"], r["seed"], r["hyperparameter"]) ==
                 (row["update_interval"], row["lookback"], row["seed"], row["hyperparameter"]))
        x0 = math.log10(study.member_of(cfg, "uci_energy", "Ours_LR_Momentum", row["seed"])[row["hyperparameter"]])
        for side in ("ours", "exact"):
            by_hand = 10 ** (x0 - hyper_lr * g[side] / (abs(g[side]) + 1e-8)) - 10 ** x0
            assert row[side] == pytest.approx(by_hand, rel=2e-4, abs=1e-12), (row, side)
        if row["lookback"] == 1:   # one Neumann term is the one-step unrolled derivative: the same update
            assert quality.relative_error(row["ours"], row["exact"]) < 1e-4
    summary = {(r["lookback"], r["quantity"]): r["mean"] for r in quality.paper_summary(rows)}
    for name in ("lr", "weight_decay"):
        errors = [quality.relative_error(r["ours"], r["exact"]) for r in rows
                  if r["lookback"] == 3 and r["hyperparameter"] == name]
        assert summary[(3, f"relative_error_{name}")] == pytest.approx(sum(errors) / len(errors))


def test_quality_runs_clip_no_hyperparameter_and_match_diff_through_opt():
    cfg = config()
    assert appendix.exact_algorithm(cfg) == "DiffThroughOpt"
    assert appendix.exact_overrides(cfg, 7, 4)["unroll_steps"] == 4
    assert appendix.exact_overrides(cfg, 7, 4)["update_interval"] == 7
    bounds = load_settings("uci_energy", "DiffThroughOpt", quality.NO_CLIPPING)
    assert bounds["log10_lr_min"] < -1000 and bounds["log10_lr_max"] > 1000
    with pytest.raises(study.StudyConfigError, match=r"appendix\.quality"):
        config(quality={**cfg["appendix"]["quality"], "exact_algorithm": "Ours_LR"})


def test_heatmaps_draw_the_papers_figures(tmp_path):
    """Sensitivity: values x 1000 without decimals, T = 1 at the bottom, the colour scale's top the largest
    grid median (not the baseline's); quality: the paper's two panels; captions free of reST markup."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from docutils.core import publish_doctree

    from onepass import heatmaps

    table = pd.DataFrame([
        {"algorithm": a, "cell": f"T{T}_K{K}", "update_interval": T, "lookback": K, "runs": 2, "diverged": 0,
         "median_test_metric": v, "mean_test_metric": v}
        for a, T, K, v in [("Ours_LR_Momentum", 1, 1, 0.0042), ("Ours_LR_Momentum", 2, 1, 0.0061),
                           ("Ours_LR_Momentum", 2, 2, 0.0055), ("DiffThroughOpt", 1, 1, 0.0049),
                           ("DiffThroughOpt", 2, 1, 0.0070), ("DiffThroughOpt", 2, 2, 0.0058)]]
        + [{"algorithm": "Random", "cell": "baseline", "update_interval": None, "lookback": None, "runs": 2,
            "diverged": 0, "median_test_metric": 0.0400, "mean_test_metric": 0.04}])
    fig = heatmaps.sensitivity(table, "uci_energy")
    ours, exact, baseline = fig.axes[:3]
    assert sorted(t.get_text() for t in ours.texts) == ["4", "6", "6"]   # 4.2, 6.1 and 5.5 (x 1000)
    assert sorted(t.get_text() for t in exact.texts) == ["5", "6", "7"]
    assert [t.get_text() for t in baseline.texts] == ["40"]
    image = ours.images[0]
    assert image.origin == "lower" and image.norm.vmax == pytest.approx(0.0070) and image.norm.vmin == 0
    assert [t.get_text() for t in ours.get_yticklabels()] == ["1", "2"]   # row 0 (T = 1) at the bottom
    assert baseline.images[0].norm is image.norm
    plt.close(fig)
    paper = pd.DataFrame([{"update_interval": 1, "lookback": 1, "quantity": q, "values": 3, "mean": m, "median": m}
                          for q, m in (("relative_error_lr", 0.0123), ("relative_error_weight_decay", 0.456))])
    fig = heatmaps.quality(paper, "uci_energy")
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["1.2%", "46%"]
    plt.close(fig)
    for kind in ("sensitivity", "quality", "quality_direct"):
        text = heatmaps.caption(kind, "uci_energy")
        assert "|" not in text and (kind == "sensitivity" or "relative error" in text)
        doc = publish_doctree(text, settings_overrides={"report_level": 5})
        assert not list(doc.findall(lambda n: n.tagname in ("problematic", "system_message")))
    assert "not the paper's" in heatmaps.caption("quality_direct", "uci_energy")
