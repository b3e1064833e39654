"""The paper's studies that gather runs across datasets (onepass.paper_studies, onepass.paper_figures): each
study's plan is the paper's design, the validation-proportion re-cut and table are checked by hand, and every
figure renders from a small fixture."""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config

from onepass import catalog, paper_figures, paper_studies, study
from onepass.data import Dataset, with_validation_proportion
from onepass.settings import ConfigError, load_settings
from test_pipeline import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def full() -> dict:
    config = study.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA)
    paper_studies.check(config)
    return config


def quick() -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / "quick.yaml").read_text()))
    config = study.validate(config, SCHEMA)
    paper_studies.check(config)
    return config


# ---- the designs -------------------------------------------------------------------------------------------
def test_validation_proportion_study_is_the_papers():
    """run_all.py 420-439: UCI Energy, Ours (WD+LR+M) and Ours (WD+HDLR+M), 200 initialisations at validation
    proportions 0.25, 0.375 and 0.5; the table (paper_plots.py 521-525) beside UCI Energy's own split."""
    cfg = full()
    variants = ["uci_energy_valid25", "uci_energy_valid375", "uci_energy_valid50"]
    assert paper_studies.datasets(cfg, "validation_proportion") == ["uci_energy", *variants]
    for dataset, p in zip(variants, (0.25, 0.375, 0.5)):
        assert catalog.dataset(dataset).base == "uci_energy"
        assert study.algorithms(cfg, dataset) == ["Ours_LR_Momentum", "Ours_HDLR_Momentum"]
        for algorithm in study.algorithms(cfg, dataset):
            assert study.seeds(cfg, dataset, algorithm) == list(range(200))
            assert study.settings(cfg, dataset, algorithm)["validation_proportion"] == p
            # the same initialisations as UCI Energy's runs, at every proportion
            assert (study.member_of(cfg, dataset, algorithm, 7)
                    == study.member_of(cfg, "uci_energy", algorithm, 7))
        assert paper_studies.proportion(dataset) == p
    assert paper_studies.proportion("uci_energy") == pytest.approx(78 / 692)
    assert paper_studies.spec(cfg, "validation_proportion")["algorithms"] == ["Ours_LR_Momentum",
                                                                              "Ours_HDLR_Momentum"]


def test_proof_of_concept_study_is_the_papers():
    """run_all.py 167-198: 500 Random runs on UCI Energy from lr in 10^[-6, 1] and weight decay in 10^[-7, 2]
    (its rescaled draws), 50 of Ours (WD+LR) from the usual 10^[-6, -1] x 10^[-7, -2]; momentum drawn by
    neither, so the paper's UCI config's 0.5 through its sigmoid."""
    cfg = full()
    assert paper_studies.datasets(cfg, "proof_of_concept") == ["uci_energy_concept", "uci_energy_concept_ours"]
    assert study.algorithms(cfg, "uci_energy_concept") == ["Random"]
    assert study.algorithms(cfg, "uci_energy_concept_ours") == ["Ours_LR"]
    assert study.seeds(cfg, "uci_energy_concept", "Random") == list(range(500))
    assert study.seeds(cfg, "uci_energy_concept_ours", "Ours_LR") == list(range(50))
    assert paper_studies.spec(cfg, "proof_of_concept")["count"] == 20
    random = [study.member_of(cfg, "uci_energy_concept", "Random", s) for s in range(500)]
    ours = [study.member_of(cfg, "uci_energy_concept_ours", "Ours_LR", s) for s in range(50)]
    usual = [study.member_of(cfg, "uci_energy", "Random", s) for s in range(500)]
    sigmoid_half = 1 / (1 + math.exp(-0.5))
    for members, (lr_lo, lr_hi), (wd_lo, wd_hi) in ((random, (-6, 1), (-7, 2)), (ours, (-6, -1), (-7, -2))):
        lr = np.log10([m["lr"] for m in members])
        wd = np.log10([m["weight_decay"] for m in members])
        assert lr_lo <= lr.min() and lr.max() <= lr_hi and wd_lo <= wd.min() and wd.max() <= wd_hi
        # spread over the whole box (500 or 50 uniform draws come within 10% of each end)
        assert lr.min() < lr_lo + 0.1 * (lr_hi - lr_lo) and lr.max() > lr_hi - 0.1 * (lr_hi - lr_lo)
        assert all(m["momentum"] == pytest.approx(sigmoid_half) for m in members)
    # Random's draws are UCI Energy's stretched onto the wide box, as the paper's rescaled_inits (run_all.py 175-183)
    for r, u in zip(random[:20], usual[:20]):
        assert math.log10(r["lr"]) == pytest.approx((math.log10(u["lr"]) + 1) * 7 / 5 + 1)
        assert math.log10(r["weight_decay"]) == pytest.approx((math.log10(u["weight_decay"]) + 2) * 9 / 5 + 2)
    # Ours (WD+LR) starts from UCI Energy's first 50 learning rates and weight decays
    assert [(m["lr"], m["weight_decay"]) for m in ours] == [(u["lr"], u["weight_decay"]) for u in usual[:50]]
    settings = study.settings(cfg, "uci_energy_concept_ours", "Ours_LR")
    assert sorted(settings["optimise"]) == ["lr", "weight_decay"] and settings["hypergradient"] == "neumann"


def test_per_dataset_paper_figures_cover_the_papers_datasets():
    """uci_sample_learning_rates: the 8 UCI sets; large_scale_runtimes: Fashion-MNIST, Penn Treebank, CIFAR-10;
    best_performance_over_time: the BayesOpt datasets and the Long Diff-through-Opt comparisons."""
    cfg = full()
    assert paper_studies.datasets(cfg, "learning_rates") == [d for d in cfg["datasets"][:8]]
    assert all(catalog.family(d) == "uci" for d in paper_studies.datasets(cfg, "learning_rates"))
    assert paper_studies.datasets(cfg, "runtimes") == ["fashion_mnist", "penn_treebank", "cifar10"]
    bayesopt = [d for d in cfg["datasets"] if "BayesOpt" in study.algorithms(cfg, d)]
    assert set(bayesopt) <= set(paper_studies.datasets(cfg, "best_over_time"))
    assert {"uci_energy_long", "fashion_mnist_long"} <= set(paper_studies.datasets(cfg, "best_over_time"))


def test_quick_study_makes_every_paper_output_at_a_smaller_scale():
    cfg = quick()
    assert paper_studies.datasets(cfg, "validation_proportion") == [
        "uci_energy", "uci_energy_valid25", "uci_energy_valid375", "uci_energy_valid50"]
    assert [cfg["sweep"]["initialisations"][d] for d in ("uci_energy_valid25", "uci_energy_concept",
                                                         "uci_energy_concept_ours")] == [20, 60, 10]
    assert paper_studies.datasets(cfg, "proof_of_concept") == ["uci_energy_concept", "uci_energy_concept_ours"]
    assert paper_studies.datasets(cfg, "learning_rates") == ["uci_energy"]
    assert paper_studies.datasets(cfg, "runtimes") == ["fashion_mnist"]
    assert paper_studies.datasets(cfg, "best_over_time") == ["uci_energy", "fashion_mnist", "uci_energy_long",
                                                             "fashion_mnist_long"]


def test_quick_study_keeps_the_long_horizon_designs_at_a_small_scale():
    """The quick study's Long Diff-through-Opt (Medium) and Fashion-MNIST Standalone comparison keep the
    paper's designs (run_all.py; Medium: a hyperparameter step every 200 weight steps, differentiating through
    all 200, weights kept; Standalone: windows as long as the short runs, weights reset) on 2 seeds: Medium on
    Fashion-MNIST's budget of 2000 weight steps (10 windows), the short runs 20 hyperparameter steps of 10
    (200 weight steps), Standalone 5 windows of 200."""
    cfg = quick()
    medium = study.settings(cfg, "fashion_mnist", "LongDiffThroughOpt_Medium")
    random = study.settings(cfg, "fashion_mnist", "Random")
    assert (medium["update_interval"], medium["unroll_steps"], medium["reset_weights"]) == (200, 200, False)
    assert medium["hyperparameter_steps"] * 200 == random["hyperparameter_steps"] * random["update_interval"] == 2000
    assert study.seeds(cfg, "fashion_mnist", "LongDiffThroughOpt_Medium") == [0, 1]
    assert (study.member_of(cfg, "fashion_mnist", "LongDiffThroughOpt_Medium", 1)
            == study.member_of(cfg, "fashion_mnist", "Random", 1))
    assert study.algorithms(cfg, "fashion_mnist_long") == ["Random", "Ours_LR_Momentum", "DiffThroughOpt",
                                                           "LongDiffThroughOpt_Standalone"]
    for short in ("Random", "Ours_LR_Momentum", "DiffThroughOpt"):
        s = study.settings(cfg, "fashion_mnist_long", short)
        assert (s["hyperparameter_steps"], s["update_interval"]) == (20, 10), short
        assert study.seeds(cfg, "fashion_mnist_long", short) == [0, 1]
    standalone = study.settings(cfg, "fashion_mnist_long", "LongDiffThroughOpt_Standalone")
    assert (standalone["update_interval"], standalone["unroll_steps"], standalone["hyperparameter_steps"],
            standalone["reset_weights"]) == (200, 200, 5, True)
    assert study.seeds(cfg, "fashion_mnist_long", "LongDiffThroughOpt_Standalone") == [0, 1]


def test_a_study_without_the_datasets_lacks_the_outputs():
    cfg = full()
    cfg = {**cfg, "datasets": ["uci_energy", "uci_energy_concept"]}
    assert paper_studies.datasets(cfg, "validation_proportion") == []   # no variant: no table
    assert paper_studies.datasets(cfg, "proof_of_concept") == []        # trajectories missing


def test_unknown_names_in_paper_figures_name_the_key():
    cfg = full()
    bad = {**cfg, "paper_figures": {**cfg["paper_figures"], "runtimes": ["fashion_mnist", "mnist_nowhere"]}}
    with pytest.raises(Exception, match="paper_figures.runtimes.*mnist_nowhere"):
        paper_studies.check(bad)


# ---- the validation-proportion re-cut ----------------------------------------------------------------------
def toy(n_train=614, n_valid=78, n_test=76) -> Dataset:
    rows = torch.arange(n_train + n_valid + n_test, dtype=torch.float32)[:, None]
    cut = (rows[:n_train], rows[n_train:n_train + n_valid], rows[n_train + n_valid:])
    return Dataset(name="toy", family="uci", task="regression", train=(cut[0], cut[0] * 2),
                   valid=(cut[1], cut[1] * 2), test=(cut[2], cut[2] * 2), input_shape=(1,), num_classes=None,
                   vocab_size=None, normalisers={"y_std": torch.tensor(1.0)})


@pytest.mark.parametrize("proportion, n_train", [(0.25, 519), (0.375, 432), (0.5, 346)])
def test_validation_proportion_recuts_the_rows_as_the_papers_code(proportion, n_train):
    """The paper's datasets.make_split_datasets on UCI Energy's 692 rows: rint(692 (1 - p)) train (0.375:
    rint(432.5) = 432, half to even), the rest validate, in order; the test split untouched."""
    data = toy()
    out = with_validation_proportion(data, proportion)
    assert len(out.train[0]) == n_train and len(out.valid[0]) == 692 - n_train
    assert out.train[0][:, 0].tolist() == list(range(n_train))
    assert out.valid[0][:, 0].tolist() == list(range(n_train, 692))
    assert torch.equal(out.valid[1], out.valid[0] * 2) and torch.equal(out.test[0], data.test[0])
    assert len(data.train[0]) == 614   # the loaded dataset is left alone


def test_validation_proportion_is_checked():
    assert load_settings("uci_energy_valid375", "Ours_LR_Momentum")["validation_proportion"] == 0.375
    assert load_settings("uci_energy", "Ours_LR_Momentum")["validation_proportion"] is None
    with pytest.raises(ConfigError, match="validation_proportion"):
        load_settings("uci_energy", "Ours_LR_Momentum", {"validation_proportion": 1.0})
    with pytest.raises(ConfigError, match="validation_proportion"):
        load_settings("uci_energy", "Ours_LR_Momentum", {"validation_proportion": 0})


def test_training_uses_the_recut_validation_split(data_dir):
    """A run of the 0.5 variant sees 346 validation rows: its final validation loss is the mean over those."""
    from onepass.data import load
    from onepass.train import run

    metrics = {}
    for dataset in ("uci_energy", "uci_energy_valid50"):
        metrics[dataset] = run(dataset, "Random", 0, 1e-3, 1e-4, 0.5, data_dir, data_dir.parent / f"run_{dataset}",
                               overrides={"weight_steps": 20, "log_every": 20})
    assert metrics["uci_energy"]["valid_loss"] != pytest.approx(metrics["uci_energy_valid50"]["valid_loss"])
    data = with_validation_proportion(load("uci_energy", data_dir), 0.5)
    assert len(data.valid[0]) == 346 and len(data.train[0]) == 346
    # ASHA's and PBT's trials load their data themselves: re-cut too
    from onepass.search.ray_tune import _trial_data

    ctx = {"dataset": "uci_energy_valid375", "data_dir": str(data_dir), "device": "cpu",
           "inner": load_settings("uci_energy_valid375", "Random_Validation")}
    assert (len(_trial_data(ctx).train[0]), len(_trial_data(ctx).valid[0])) == (432, 260)


# ---- the validation-proportion table, by hand --------------------------------------------------------------
def summary(dataset, rows):
    metric = catalog.metric_name(dataset)
    return pd.DataFrame([{"dataset": dataset, "algorithm": a, "label": catalog.label(a), "metric": metric,
                          "runs": n, "done": n - d, "diverged": d, "stale": 0, "missing": 0, "mean": m,
                          "mean_se": ms, "median": md, "median_se": mds, "best": b, "statistic": "bootstrap"}
                         for a, n, d, m, ms, md, mds, b in rows])


def test_validation_table_by_hand(tmp_path):
    """Rows: the study's algorithms in its order (others dropped); per proportion, from UCI Energy's own split
    (78 / 692 = 0.113) up, the summaries' numbers as they are."""
    paths = []
    for dataset, rows in (
            ("uci_energy_valid50", [("Ours_LR_Momentum", 4, 1, 2.5, 0.25, 2.0, 0.3, 1.23456),
                                    ("Ours_HDLR_Momentum", 4, 0, 3.5, 0.5, 3.0, 0.4, 2.0)]),
            ("uci_energy", [("Ours_HDLR_Momentum", 4, 0, 1.5, 0.05, 1.4, 0.04, 0.9),
                            ("Random", 4, 0, 9.0, 1.0, 9.0, 1.0, 8.0),
                            ("Ours_LR_Momentum", 4, 0, 1.25, 0.05, 1.2, 0.04, 0.75)])):
        path = tmp_path / f"{dataset}.tsv"
        summary(dataset, rows).to_csv(path, sep="\t", index=False)
        paths.append(path)
    out = {k: tmp_path / f"vp.{k}" for k in ("md", "tsv", "html")}
    rows = paper_studies.write_validation_table(paths, ["Ours_LR_Momentum", "Ours_HDLR_Momentum"], out["md"],
                                                out["tsv"], out["html"])
    assert rows[["algorithm", "dataset"]].values.tolist() == [
        ["Ours_LR_Momentum", "uci_energy"], ["Ours_LR_Momentum", "uci_energy_valid50"],
        ["Ours_HDLR_Momentum", "uci_energy"], ["Ours_HDLR_Momentum", "uci_energy_valid50"]]
    assert rows["validation_proportion"].tolist() == pytest.approx([78 / 692, 0.5, 78 / 692, 0.5])
    assert rows["median"].tolist() == [1.2, 2.0, 1.4, 3.0] and rows["diverged"].tolist() == [0, 1, 0, 0]
    text = out["md"].read_text()
    lines = [line for line in text.splitlines() if line.startswith("| Ours")]
    # the paper's format: the SE to one significant figure, the value to its decimal place, no bold; Best to
    # three significant figures (0.75 -> 0.750, 1.23456 -> 1.23)
    assert lines[0].split(" | ")[1:5] == ["1.25 ± 0.05", "1.20 ± 0.04", "0.750", "4 (0)"]
    assert "1.23 |" in lines[0] and "4 (1)" in lines[0]
    assert "| Method | 0.113: Mean ± SE |" in text and "0.5: Best" in text
    assert "Random" not in text.split("|", 1)[1]
    assert "<table>" in out["html"].read_text()
    assert "2.5 ± 0.2" in lines[0] and "**" not in text


# ---- figures from fixtures ---------------------------------------------------------------------------------
def write_run(runs_dir, algorithm, seed, history, metrics=None, evaluations=None):
    d = runs_dir / algorithm / f"seed{seed}"
    d.mkdir(parents=True)
    pd.DataFrame(history).to_csv(d / "history.csv", index=False)
    if evaluations is not None:
        pd.DataFrame(evaluations).to_csv(d / "evaluations.csv", index=False)
    (d / "metrics.json").write_text(json.dumps(metrics or {}))


def runs_table(dataset, rows):
    return pd.DataFrame([{"dataset": dataset, "algorithm": a, "seed": s, "status": st, "diverged": st == "diverged",
                          **extra} for a, s, st, extra in rows])


def test_proof_of_concept_figure_from_a_fixture(tmp_path):
    """The heatmap over the Random runs' initial (lr, weight decay) on log axes, the NaN region where the
    nearest run diverged hatched, and one line per finished trajectory run (the diverged one left out)."""
    rng = np.random.default_rng(0)
    lr, wd = 10 ** rng.uniform(-6, 1, 40), 10 ** rng.uniform(-7, 2, 40)
    metric = np.where(lr > 1, np.nan, 5 + np.log10(lr) ** 2)
    heat = runs_table("uci_energy_concept", [
        ("Random", i, "diverged" if np.isnan(m) else "done",
         {"init_lr": a, "init_weight_decay": b, "test_metric": m}) for i, (a, b, m) in enumerate(zip(lr, wd, metric))])
    traj_dir = tmp_path / "runs"
    rows = []
    for seed, status in ((0, "done"), (1, "diverged"), (2, "done"), (3, "done")):
        write_run(traj_dir, "Ours_LR", seed, {"step": [0, 10, 20], "lr": [1e-4, 1e-3, 1e-2],
                                               "weight_decay": [1e-5, 1e-5 * (seed + 1), 1e-4], "test_metric": 1.0})
        rows.append(("Ours_LR", seed, status, {}))
    fig = paper_figures.proof_of_concept(heat, "Random", runs_table("uci_energy_concept_ours", rows), traj_dir,
                                         "Ours_LR", count=2)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = [line.get_gid() for line in ax.get_lines() if str(line.get_gid()).startswith("Ours_LR")]
    assert lines == ["Ours_LR-0", "Ours_LR-2"]                 # the first 2 finished runs
    assert [list(c.hatches) for c in ax.collections if c.get_gid() == "diverged"] == [["xx"]]
    # on a regular grid of runs (log10 lr -6..1, log10 weight decay -7..2) that diverged at lr = 10: a cell is
    # hatched where it lies nearer the column log10 lr = 1 than the column 0
    grid_lr, grid_wd = np.meshgrid(np.arange(-6.0, 2.0), np.arange(-7.0, 3.0))
    points = np.column_stack([grid_lr.ravel(), grid_wd.ravel()])
    values = np.where(points[:, 0] == 1, np.nan, 5 + points[:, 0] ** 2)
    xs, ys, smooth, nan_cells = paper_figures.heat_grid(points, values, cells=20)
    assert nan_cells[:, xs > 0.5].all() and not nan_cells[:, xs < 0.5].any()
    assert np.isfinite(smooth).all() and smooth.min() > 0
    # the smoothed values pass through the runs': 5 + 36 = 41 at lr = 10^-6, 5 at lr = 1
    assert smooth[:, 0] == pytest.approx(41, rel=0.02)
    assert smooth[:, np.argmin(abs(xs - 0))] == pytest.approx(5, rel=0.02)
    assert smooth.min() >= 5 and smooth.max() <= 41
    plt.close(fig)


def test_learning_rates_figure_from_a_fixture(tmp_path):
    """One line per algorithm with one learning rate (Ours (WD+HDLR+M)'s are per weight, BayesOpt a search),
    the chosen seed's history, on a log axis."""
    runs_dir = tmp_path / "runs"
    rows = []
    for algorithm in ("Random", "Ours_LR", "Ours_HDLR_Momentum", "BayesOpt"):
        for seed in (0, 1):
            write_run(runs_dir, algorithm, seed, {"step": [0, 100, 200], "lr": [1e-3, 2e-3 * (seed + 1), 5e-3]})
            rows.append((algorithm, seed, "done", {}))
    fig = paper_figures.learning_rates(runs_table("uci_energy", rows), runs_dir, seed=1)
    ax = fig.axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["Random", "Ours_LR"]
    assert ax.get_lines()[0].get_ydata().tolist() == [1e-3, 4e-3, 5e-3] and ax.get_yscale() == "log"
    assert ax.get_lines()[1].get_color() == catalog.colour("Ours_LR")
    plt.close(fig)


def test_runtimes_figure_from_a_fixture():
    """A violin per trained algorithm over its finished runs; its mean and median marked."""
    rows = [("Random", s, "done", {"wall_time_s": t}) for s, t in enumerate((1.0, 2.0, 6.0))]
    rows += [("Random", 3, "diverged", {"wall_time_s": 100.0})]
    rows += [("Ours_LR", s, "done", {"wall_time_s": t}) for s, t in enumerate((4.0, 5.0))]
    rows += [("BayesOpt", 0, "done", {"wall_time_s": 50.0})]
    fig = paper_figures.runtimes(runs_table("fashion_mnist", rows))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [catalog.label("Random"), catalog.label("Ours_LR")]
    points = [(c.get_gid(), tuple(c.get_offsets()[0])) for c in ax.collections if c.get_gid() and len(c.get_offsets())]
    assert ("Random", (0.0, 3.0)) in points and ("Random", (0.0, 2.0)) in points   # mean 3, median 2
    assert ("Ours_LR", (1.0, 4.5)) in points
    plt.close(fig)


def test_best_over_time_from_a_fixture(tmp_path):
    """A run's running minimum (NaN counted as +inf) against its time; a search's lowest test metric of each
    evaluation against cumulative search time; the band the bootstrap medians' spread."""
    assert paper_figures.running_minimum([3.0, np.nan, 2.0, 5.0, 1.0]).tolist() == [3.0, 3.0, 2.0, 2.0, 1.0]
    assert paper_figures.running_minimum([np.nan, 4.0]).tolist() == [math.inf, 4.0]
    grid = np.array([0.5, 1.0, 1.5, 3.0])
    assert np.allclose(paper_figures.held(np.array([1.0, 2.0]), np.array([4.0, 3.0]), grid),
                       [np.nan, 4.0, 4.0, 3.0], equal_nan=True)
    centre, spread = paper_figures.median_band(np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]]))
    assert centre[0] == 1.0 and spread[0] == 0.0 and 2.0 < centre[1] < 6.0 and spread[1] > 0
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "Random", 0, {"step": [0, 1, 2], "time_s": [1.0, 2.0, 3.0], "test_metric": [5.0, np.nan, 4.0]})
    write_run(runs_dir, "BayesOpt", 0, {"step": [0], "time_s": [1.0], "test_metric": [1.0]},
              evaluations={"cumulative_time_s": [3.0, 6.0], "min_test_metric": [2.0, 2.5], "test_metric": [9.0, 9.0]})
    runs = runs_table("uci_energy", [("Random", 0, "done", {}), ("BayesOpt", 0, "done", {})])
    curves = paper_figures.best_curves(runs, runs_dir)
    assert curves["Random"][0][1].tolist() == [5.0, 5.0, 4.0]
    assert curves["BayesOpt"][0][0].tolist() == [3.0, 6.0] and curves["BayesOpt"][0][1].tolist() == [2.0, 2.0]
    fig = paper_figures.best_over_time(runs, runs_dir)
    ax = fig.axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["Random", "BayesOpt"] and ax.get_xscale() == "log"
    random = ax.get_lines()[0].get_ydata()
    assert np.nanmin(random) == 4.0 and np.nanmax(random) == 5.0
    plt.close(fig)


def test_edf_counts_a_run_over_the_threshold_as_diverged(tmp_path):
    """cdfs' loss CDFs (paper_plots.py 645-682): a run whose final value reaches the post-hoc threshold is set
    to NaN (figures.py 652-653), so the curve of 3 runs, one over it, climbs to 2/3 only."""
    from onepass import figures

    rows = [("Random", 0, "done", {"test_metric": 0.5, "over_threshold": False}),
            ("Random", 1, "done", {"test_metric": 2000.0, "over_threshold": True}),
            ("Random", 2, "done", {"test_metric": 0.7, "over_threshold": False})]
    fig = figures.edf(runs_table("fashion_mnist", rows), tmp_path)
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == "Random"]
    assert np.allclose(line.get_xdata(), [0.5, 0.7]) and np.allclose(line.get_ydata(), [1 / 3, 2 / 3])
    plt.close(fig)


def test_error_cdfs_from_a_fixture():
    """The paper's CDF_Error figures (paper_plots.py 685-711, figures.py 641-660): per algorithm the sorted final
    test errors (1 - accuracy), each twice, against 0, 1/n, 1/n, ..., 1; a diverged run without an accuracy
    at 1 - 1/10 (ten classes), a failed run left out; linear axes on [0, 1]."""
    rows = [("Random", 0, "done", {"test_accuracy": 0.8}), ("Random", 1, "done", {"test_accuracy": 0.7}),
            ("Random", 2, "diverged", {"test_accuracy": np.nan}), ("Random", 3, "failed", {"test_accuracy": np.nan}),
            ("Ours_LR", 0, "done", {"test_accuracy": 0.85})]
    fig = paper_figures.error_cdfs(runs_table("fashion_mnist", rows))
    ax = fig.axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["Random", "Ours_LR"]
    random, ours = ax.get_lines()
    assert np.allclose(random.get_xdata(), [0.2, 0.2, 0.3, 0.3, 0.9, 0.9])
    assert np.allclose(random.get_ydata(), [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert np.allclose(ours.get_xdata(), [0.15, 0.15]) and np.allclose(ours.get_ydata(), [0, 1])
    assert random.get_color() == catalog.colour("Random")
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1) and ax.get_xscale() == "linear"
    plt.close(fig)
    # a regression dataset has no test error: an empty figure, said so
    fig = paper_figures.error_cdfs(runs_table("uci_energy", [("Random", 0, "done", {"test_metric": 1.0})]))
    assert not fig.axes[0].get_lines() and "no finished runs" in fig.axes[0].texts[0].get_text()
    plt.close(fig)


def test_error_cdfs_are_drawn_for_the_papers_classification_datasets():
    """CDF_Error_* of Fashion-MNIST, CIFAR-10, Fashion-MNIST with BatchNorm and Fashion-MNIST's Standalone
    comparison (Long Diff-through-Opt (Medium) among Fashion-MNIST's algorithms, as the paper's
    long_horizon_fashion_mnist_cdfs adds it); the quick study draws those it has."""
    assert paper_studies.datasets(full(), "error_cdfs") == ["fashion_mnist", "cifar10", "fashion_mnist_bn",
                                                            "fashion_mnist_long"]
    assert all(catalog.dataset(d).task == "classification" for d in paper_studies.datasets(full(), "error_cdfs"))
    assert paper_studies.datasets(quick(), "error_cdfs") == ["fashion_mnist", "fashion_mnist_bn",
                                                             "fashion_mnist_long"]


def test_captions_render_without_docutils_messages():
    from test_report import rst_messages

    texts = [paper_figures.caption("proof_of_concept", "uci_energy_concept", count=20, trajectory="Ours_LR")]
    texts += [paper_figures.caption(k, "uci_energy", seed=0)
              for k in ("learning_rates", "runtimes", "best_over_time", "error_cdfs")]
    texts.append((ROOT / "workflow" / "report" / "validation_proportion.rst").read_text()
                 .replace("{{", "").replace("}}", ""))
    for text in texts:
        assert "{" not in text.replace("{{", "") or "snakemake" in text
        assert not rst_messages(text), text
    assert "20 runs of Ours (WD+LR)" in texts[0]


def test_paper_figures_can_be_left_out():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["paper_figures"] = None
    config = study.validate(config, SCHEMA)
    paper_studies.check(config)
    assert all(paper_studies.datasets(config, kind) == [] for kind in paper_studies.KINDS)
