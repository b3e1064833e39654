"""Black-box baselines: BayesOpt (scikit-optimize), ASHA and PBT (Ray Tune) on UCI Energy with tiny budgets.

The Ray searches run as the command-line job the pipeline runs (a subprocess), with TMPDIR set to a fresh
directory whose name marks every process that job's Ray starts, so that the tests can tell that none is
left behind.
"""

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import pytest

from onepass.catalog import is_search
from onepass.settings import ConfigError
from onepass.search import main, run, search_settings
from onepass.search.ray_tune import perturb
from onepass.search.space import space_point
from onepass.search.record import EVALUATION_COLUMNS, PAPER_STATISTICS, add_evaluation, paper_test_metrics
from onepass.records import HISTORY_COLUMNS
from onepass.train import run as train_run
from onepass import data as datasets
from onepass.population import Member, Population

RUN_KEYS = ["dataset", "family", "task", "algorithm", "seed", "init_lr", "init_weight_decay", "init_momentum",
            "final_lr", "final_weight_decay", "final_momentum", "train_loss", "valid_loss", "test_loss",
            "test_metric", "test_mse_unnormalised", "test_accuracy", "test_perplexity", "weight_steps",
            "hyperparameter_steps", "wall_time_s", "device", "diverged", "slurm_job_id", "versions", "settings"]
TINY_BO = ["hyperparameter_steps=6", "log_every=3", "checkpoint_every=3", "search_initial_points=3",
           "search_guided_points=2"]
DIVERGING_SPACE = ["search_log10_lr=[-0.3, 0]", "search_momentum=[0.9, 0.99]"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Bitwise comparisons and timings need one torch thread (subprocesses get --threads 1)."""


def evaluations(out: Path) -> list[dict]:
    with open(out / "evaluations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            row[key] = value == "true" if value in ("true", "false") else float(value)
    return rows


def check_record(out: Path, metrics: dict, count: int | None = None) -> list[dict]:
    """The outputs of a search agree with each other; returns the evaluations."""
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(RUN_KEYS) <= set(metrics)
    header = (out / "evaluations.csv").read_text().splitlines()[0].split(",")
    assert header == EVALUATION_COLUMNS
    rows = evaluations(out)
    assert rows and metrics["evaluations"] == len(rows) and (count is None or len(rows) == count)
    assert metrics["diverged_evaluations"] == sum(r["diverged"] for r in rows)
    valid = [r["valid_loss"] for r in rows if not r["diverged"]]
    assert metrics["valid_loss"] == min(valid)  # the reported best is the minimum of what was recorded
    best = rows[metrics["best_evaluation"]]
    assert best["valid_loss"] == metrics["valid_loss"] and best["test_metric"] == metrics["test_metric"]
    assert metrics["test_mse_unnormalised"] == metrics["test_metric"] and metrics["diverged"] is False
    assert metrics["final_lr"] == best["lr"] and not metrics["test_accuracy"]
    assert rows[-1]["best_valid_loss"] == metrics["valid_loss"]
    bests = [r["best_valid_loss"] for r in rows if not math.isnan(r["best_valid_loss"])]
    assert bests == sorted(bests, reverse=True)
    times = [r["cumulative_time_s"] for r in rows]
    assert times == sorted(times)
    assert metrics["weight_steps"] == rows[-1]["cumulative_weight_steps"] == sum(
        r["cumulative_weight_steps"] - (rows[i - 1]["cumulative_weight_steps"] if i else 0) for i, r in enumerate(rows))
    header, *hist = (out / "history.csv").read_text().splitlines()
    assert header.split(",") == HISTORY_COLUMNS and len(hist) == len(rows)
    last = dict(zip(HISTORY_COLUMNS, hist[-1].split(",")))
    assert float(last["test_metric"]) == metrics["test_metric"]
    assert float(last["time_s"]) == rows[-1]["cumulative_time_s"]
    return rows


def check_all_diverged(out: Path, count: int, penalty: float = 10.0) -> None:
    m = json.loads((out / "metrics.json").read_text())
    assert m["diverged"] is True and m["best_evaluation"] is None
    assert m["evaluations"] == m["diverged_evaluations"] == count
    assert all(math.isnan(m[k]) for k in ("train_loss", "valid_loss", "test_loss", "test_metric", "final_lr"))
    rows = evaluations(out)
    assert len(rows) == count and all(r["diverged"] and math.isnan(r["valid_loss"]) for r in rows)
    assert all(r["score"] == penalty for r in rows)


# ---- BayesOpt ---------------------------------------------------------------------------------------------
def test_bayesopt_end_to_end_and_replay(data_dir, tmp_path):
    m = run("uci_energy", "BayesOpt", 3, 1e-3, 1e-4, 0.5, data_dir, tmp_path / "bo", overrides=TINY_BO)
    rows = check_record(tmp_path / "bo", m, count=5)
    assert m["algorithm"] == "BayesOpt" and m["seed"] == 3 and m["init_lr"] == 1e-3
    assert m["inner_algorithm"] == "Random_Validation" and m["settings"]["train_on"] == "train"
    assert [r["run_seed"] for r in rows] == [3000, 3001, 3002, 3003, 3004]
    assert all(r["min_test_metric"] <= r["test_metric"] for r in rows)
    assert m["paper_statistic"] == "best test seen"
    assert m["paper_test_metrics"] == [min(r["min_test_metric"] for r in rows)] and m["paper_test_metrics"][0] <= m["test_metric"]
    for r in rows:
        assert 1e-6 <= r["lr"] <= 1e-1 and 1e-7 <= r["weight_decay"] <= 1e-2 and 0 <= r["momentum"] <= 1
        assert r["weight_steps"] == 60 and r["hyper_step"] == 6
    for i, r in enumerate(rows):  # each evaluation is the inner training run it wrote
        inner = json.loads((tmp_path / "bo" / "evaluations" / f"{i:03d}" / "metrics.json").read_text())
        assert inner["algorithm"] == "Random_Validation" and inner["valid_loss"] == r["valid_loss"]
        assert inner["init_lr"] == r["lr"] and inner["test_metric"] == r["test_metric"]
    # started again (as after a kill), the search replays the same points and scores, without retraining
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "bo" / "evaluations").glob("*/metrics.json")}
    again = run("uci_energy", "BayesOpt", 3, 1e-3, 1e-4, 0.5, data_dir, tmp_path / "bo", overrides=TINY_BO)
    keys = ("lr", "weight_decay", "momentum", "valid_loss", "test_metric")
    assert [[r[k] for k in keys] for r in evaluations(tmp_path / "bo")] == [[r[k] for k in keys] for r in rows]
    assert again["test_metric"] == m["test_metric"]
    assert {p: p.stat().st_mtime_ns for p in written} == written


def test_bayesopt_whose_every_evaluation_diverges_reports_nan(data_dir, tmp_path, capsys):
    args = ["--dataset", "uci_energy", "--algorithm", "BayesOpt", "--seed", "0", "--lr", "0.001",
            "--weight-decay", "0.0001", "--momentum", "0.5", "--data-dir", str(data_dir), "--out",
            str(tmp_path / "bo"), "--quiet", "--threads", "1"]
    for setting in TINY_BO + DIVERGING_SPACE:
        args += ["--set", setting]
    assert main(args) == 0
    assert "every evaluation DIVERGED" in capsys.readouterr().out
    check_all_diverged(tmp_path / "bo", 5, penalty=150.0)   # UCI Energy's penalty in the paper
    rows = evaluations(tmp_path / "bo")
    assert all(10 ** -0.3 - 1e-12 <= r["lr"] <= 1.0 and 0.9 <= r["momentum"] <= 0.99 for r in rows)
    assert (tmp_path / "bo" / "history.csv").read_text().count("nan") > 0


@pytest.mark.parametrize("algorithm,overrides,key", [
    ("Random", [], "onepass.train"),
    ("BayesOpt", ["search_log10_lr=[-1, -2]"], "search_log10_lr"),
    ("BayesOpt", ["search_momentum=[0.5, 1.5]"], "search_momentum"),
    ("BayesOpt", ["search_inner_algorithm=ASHA"], "search_inner_algorithm"),
    ("PBT", ["pbt_perturbation_interval=3", "search_report_every=2"], "pbt_perturbation_interval"),
    ("PBT", ["pbt_perturbation_interval=15"], "pbt_perturbation_interval"),   # weight steps: not a multiple of T
    ("PBT", ["pbt_perturb_space=log"], "pbt_perturb_space"),
    ("ASHA", ["search_time_unit=seconds"], "search_time_unit"),
    ("BayesOpt", ["bayesopt_acquisition=UCB"], "bayesopt_acquisition"),
    ("BayesOpt", ["bayesopt_kappa=0"], "bayesopt_kappa"),
    ("ASHA", ["asha_no_such_key=1"], "asha_no_such_key"),
])
def test_bad_search_settings_name_the_key(algorithm, overrides, key):
    with pytest.raises(ConfigError, match=key):
        search_settings("uci_energy", algorithm, overrides)


def test_training_command_refuses_a_search(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="onepass.search"):
        train_run("uci_energy", "BayesOpt", 0, 1e-3, 1e-4, 0.5, data_dir, tmp_path / "x")


def test_search_configs_wrap_the_right_inner_algorithms():
    expected = {"BayesOpt": "Random_Validation", "ASHA": "Random_Validation", "PBT": "Random_Validation",
                "ASHA_Ours": "Ours_LR_Momentum", "PBT_Ours": "Ours_LR_Momentum"}
    for algorithm, inner_name in expected.items():
        settings, inner = search_settings("uci_energy", algorithm)
        assert settings["search_inner_algorithm"] == inner_name and inner["train_on"] == "train"
        assert settings["search_log10_lr"] == [-6.0, -1.0] and settings["search_momentum"] == [0.0, 1.0]
        assert settings["search_log10_weight_decay"] == [-7.0, -2.0]
    bo, _ = search_settings("uci_energy", "BayesOpt")
    assert (bo["search_initial_points"], bo["search_guided_points"]) == (5, 25)
    assert all(is_search(a) for a in expected) and not any(is_search(a) for a in ("Random", "Ours_LR", "Nope"))


def test_searches_default_to_the_papers_designs():
    asha, _ = search_settings("uci_energy", "ASHA")
    assert (asha["search_trials"], asha["asha_grace_period"], asha["asha_reduction_factor"]) == (114286, 1, 4)
    assert (asha["search_time_unit"], asha["search_report_every"]) == ("weight_steps", 1)
    for name in ("PBT", "PBT_Ours"):
        pbt, _ = search_settings("uci_energy", name)
        assert (pbt["search_trials"], pbt["pbt_perturbation_interval"], pbt["search_time_unit"]) == (
            200, 100, "weight_steps")
        assert pbt["pbt_synch"] is False and pbt["pbt_perturb_space"] == "log10"
        assert (pbt["pbt_quantile_fraction"], pbt["pbt_resample_probability"]) == (0.25, 0.25)
    bo, _ = search_settings("uci_energy", "BayesOpt")
    assert (bo["bayesopt_acquisition"], bo["bayesopt_kappa"], bo["bayesopt_surrogate"]) == ("LCB", 2.576, "matern52")


def test_bayesopt_scores_a_finite_validation_loss_however_large():
    """The paper's score (bayesopt.py:30-38): the final validation loss where finite, the penalty only where
    not. On Fashion-MNIST the threshold applies post hoc by default, so an evaluation past 1e3 trains to the end
    and scores its own validation loss, not the penalty of 3 (the frozen run of divergence_check: training
    has NaN losses and scores 3)."""
    from onepass.search.bayesopt import diverged_penalty, evaluation_score

    settings, inner = search_settings("fashion_mnist", "BayesOpt")
    assert settings["divergence_check"] == "post_hoc" and diverged_penalty(settings) == 3.0
    assert evaluation_score({"diverged": False, "valid_loss": 5000.0}, 3.0) == 5000.0
    assert evaluation_score({"diverged": True, "valid_loss": float("nan")}, 3.0) == 3.0
    assert evaluation_score({"diverged": False, "valid_loss": float("inf")}, 3.0) == 3.0


@pytest.mark.parametrize("dataset,penalty", [("uci_energy", 150.0), ("uci_kin8nm", 0.1), ("uci_power", 400.0),
                                             ("fashion_mnist", 3.0), ("uci_boston", 10.0),
                                             ("penn_treebank", 20.0)])
def test_bayesopt_penalises_divergence_with_the_papers_value_per_dataset(dataset, penalty):
    from onepass.search.bayesopt import diverged_penalty

    settings, _ = search_settings(dataset, "BayesOpt")
    assert diverged_penalty(settings) == penalty
    settings, _ = search_settings(dataset, "BayesOpt", ["bayesopt_diverged_penalty=null"])   # the earlier design
    assert diverged_penalty(settings) == settings["search_diverged_penalty"] == (20.0 if dataset == "penn_treebank"
                                                                                 else 10.0)


def test_bayesopt_optimiser_is_lcb_on_a_matern_gp_by_default():
    from sklearn.gaussian_process.kernels import Matern

    from onepass.search.bayesopt import make_optimizer

    settings, _ = search_settings("uci_energy", "BayesOpt")
    opt = make_optimizer(settings, 0)
    assert opt.acq_func == "LCB" and opt.acq_func_kwargs["kappa"] == 2.576
    gp = opt.base_estimator_
    assert isinstance(gp.kernel, Matern) and gp.kernel.nu == 2.5 and gp.alpha == 1e-6 and gp.normalize_y
    # the earlier design: scikit-optimize's defaults
    settings, _ = search_settings("uci_energy", "BayesOpt", ["bayesopt_acquisition=gp_hedge",
                                                             "bayesopt_surrogate=skopt"])
    opt = make_optimizer(settings, 0)
    assert opt.acq_func == "gp_hedge" and not isinstance(opt.base_estimator_.kernel, Matern)
    settings, _ = search_settings("uci_energy", "BayesOpt", ["bayesopt_kappa=1.96"])
    assert make_optimizer(settings, 0).acq_func_kwargs["kappa"] == 1.96


def test_schedulers_count_time_in_weight_steps_and_pbt_is_asynchronous():
    from onepass.search.ray_tune import make_scheduler

    settings, inner = search_settings("uci_energy", "ASHA")
    settings["search"] = "asha"
    asha = make_scheduler(settings, inner, 0)
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("weight_step", 4000, 4)
    assert sorted(r[0] for r in asha._brackets[0]._rungs) == [1, 4, 16, 64, 256, 1024]
    settings, inner = search_settings("uci_energy", "PBT")
    settings["search"] = "pbt"
    pbt = make_scheduler(settings, inner, 0)
    assert (pbt._time_attr, pbt._perturbation_interval, pbt._synch) == ("weight_step", 100, False)
    assert pbt._quantile_fraction == 0.25
    settings.update(search_time_unit="hyper_steps", pbt_synch=True, pbt_perturbation_interval=20)
    pbt = make_scheduler(settings, inner, 0)
    assert (pbt._time_attr, pbt._perturbation_interval, pbt._synch) == ("hyper_step", 20, True)


@pytest.mark.parametrize("search,unit,every,expected", [
    ("asha", "weight_steps", 1, list(range(1, 31))),        # the paper's: after every weight step
    ("asha", "weight_steps", 4, [4, 8, 12, 16, 20, 24, 28, 30]),
    ("asha", "hyper_steps", 1, [10, 20, 30]),
    ("pbt", "weight_steps", 5, [5, 10, 15, 20, 25, 30]),
])
def test_a_trial_reports_in_its_time_unit(data_dir, monkeypatch, search, unit, every, expected):
    """ray_trial outside Ray (tune.report captured): when it reports, what it reports, where it saves state."""
    from ray import tune

    from onepass.search import ray_tune

    name = {"asha": "ASHA", "pbt": "PBT"}[search]
    overrides = ["hyperparameter_steps=3", f"search_time_unit={unit}", f"search_report_every={every}"]
    if search == "pbt":
        overrides.append("pbt_perturbation_interval=20")
    settings, inner = search_settings("uci_energy", name, overrides)
    reports = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", lambda result, checkpoint=None: reports.append((result, checkpoint)))
    ctx = {"dataset": "uci_energy", "data_dir": str(data_dir), "device": "cpu", "inner": inner,
           "settings": settings, "search": search, "penalty": 10.0,
           "points": [{"lr": 1e-3, "weight_decay": 1e-4, "momentum": 0.5, "run_seed": 7}]}
    ray_tune.ray_trial({"trial": 0, "explore": 0}, ctx)
    assert [r["weight_step"] for r, _ in reports] == expected
    assert sum(r["new_weight_steps"] for r, _ in reports) == 30
    assert sum(r["new_hyper_steps"] for r, _ in reports) == 3
    assert all(r["score"] == r["valid_loss"] and math.isfinite(r["test_metric"]) for r, _ in reports)
    saved = [r["weight_step"] for r, c in reports if c is not None]
    assert saved == ([20, 30] if search == "pbt" else [])
    # the same run as training it alone: the reports inside a hyperparameter step change nothing
    alone = Population(inner, ray_tune._trial_data(ctx), [Member(7, 1e-3, 1e-4, 0.5)], torch.device("cpu"))
    for _ in range(3):
        alone.step()
    assert reports[-1][0]["valid_loss"] == alone.report()[0]["valid_loss"]


# ---- pieces of ASHA/PBT that need no Ray --------------------------------------------------------------------
def _expected_factors(seed: int, count: int = 3) -> list:
    rng = random.Random(seed)
    rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, 1)  # the unused resample point
    factors = []
    for _ in range(count):
        rng.random()
        factors.append(rng.choice([1.2, 0.8]))
    return factors


def test_pbt_explore_perturbs_the_current_hyperparameters(data_dir):
    # pbt_perturb_space=natural (the earlier design): lr and weight decay themselves are multiplied
    settings, inner = search_settings("uci_energy", "PBT_Ours", ["pbt_resample_probability=0",
                                                                 "pbt_perturb_space=natural"])
    trial = Population(inner, datasets.load("uci_energy", data_dir), [Member(0, 0.01, 1e-4, 0.5)], torch.device("cpu"))
    factors = _expected_factors(0)
    perturb(trial, random.Random(0), settings)
    s = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert s["lr"] == pytest.approx(0.01 * factors[0], rel=1e-5)
    assert s["weight_decay"] == pytest.approx(1e-4 * factors[1], rel=1e-5)
    assert s["momentum"] == pytest.approx(0.5 * factors[2], rel=1e-5)
    settings, _ = search_settings("uci_energy", "PBT", ["pbt_resample_probability=1", "search_momentum=[0.2, 0.3]"])
    perturb(trial, random.Random(1), settings)
    s = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert 1e-6 <= s["lr"] <= 0.1 and 1e-7 <= s["weight_decay"] <= 1e-2 and 0.2 <= s["momentum"] <= 0.3


@pytest.mark.parametrize("algorithm", ["PBT", "PBT_Ours"])
def test_pbt_explore_multiplies_log10_lr_and_weight_decay_by_default(data_dir, algorithm):
    """The paper's explore: x1.2 / x0.8 on log10 lr and log10 weight decay (lr 1e-2 -> 1e-2.4 or 1e-1.6),
    momentum multiplied in natural units and clipped to [0, 1 - 1e-6]."""
    settings, inner = search_settings("uci_energy", algorithm, ["pbt_resample_probability=0"])
    assert settings["pbt_perturb_space"] == "log10"
    trial = Population(inner, datasets.load("uci_energy", data_dir), [Member(0, 0.01, 1e-4, 0.5)], torch.device("cpu"))
    factors = _expected_factors(0)
    perturb(trial, random.Random(0), settings)
    s = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert s["lr"] == pytest.approx(10 ** (-2 * factors[0]), rel=1e-4)
    assert s["weight_decay"] == pytest.approx(10 ** (-4 * factors[1]), rel=1e-4)
    assert s["momentum"] == pytest.approx(0.5 * factors[2], rel=1e-5)
    # momentum pushed past 1 is clipped to 1 - 1e-6
    seed = next(k for k in range(100) if _expected_factors(k)[2] == 1.2)
    trial = Population(inner, datasets.load("uci_energy", data_dir), [Member(0, 0.01, 1e-4, 0.9)], torch.device("cpu"))
    perturb(trial, random.Random(seed), settings)
    assert trial.hyperparameters()["momentum"][0] == pytest.approx(1 - 1e-6, abs=3e-7)


def test_pbt_ours_scales_its_tuned_hyperparameters_by_new_over_old_config(data_dir):
    """The paper's PBT trial restored under a perturbed config multiplies each tuned hyperparameter by
    new / old of its config value: log10 lr and log10 weight decay, momentum's logit; a resample scales too."""
    settings, inner = search_settings("uci_energy", "PBT_Ours", ["pbt_resample_probability=0"])
    trial = Population(inner, datasets.load("uci_energy", data_dir), [Member(0, 0.01, 1e-4, 0.3)],
                       torch.device("cpu"))
    config = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.3}   # what the trial started from
    for name, tuned in (("lr", 1e-3), ("weight_decay", 1e-5), ("momentum", 0.8)):   # where Ours took it
        trial.set_hyperparameter(0, name, tuned)
    f = _expected_factors(0)
    new = perturb(trial, random.Random(0), settings, config)
    logit = lambda m: math.log(m / (1 - m))   # noqa: E731
    sigmoid = lambda x: 1 / (1 + math.exp(-x))   # noqa: E731
    # by hand: new config log10 lr = -2 f0, ratio f0, tuned log10 lr -3 -> -3 f0; likewise weight decay
    assert new["lr"] == pytest.approx(10 ** (-2 * f[0]), rel=1e-12)
    assert new["momentum"] == pytest.approx(0.3 * f[2], rel=1e-12)
    s = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert s["lr"] == pytest.approx(10 ** (-3 * f[0]), rel=1e-5)
    assert s["weight_decay"] == pytest.approx(10 ** (-5 * f[1]), rel=1e-5)
    assert s["momentum"] == pytest.approx(sigmoid(logit(0.8) * logit(0.3 * f[2]) / logit(0.3)), rel=1e-5)
    # a resample: the new config is a point of the space, and the tuned value is scaled by it, not replaced
    settings, _ = search_settings("uci_energy", "PBT_Ours", ["pbt_resample_probability=1"])
    point = space_point(settings, random.Random(5))
    old = dict(new)
    before = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert perturb(trial, random.Random(5), settings, old) == point
    s = {k: v[0] for k, v in trial.hyperparameters().items()}
    assert math.log10(s["lr"]) == pytest.approx(math.log10(before["lr"]) * math.log10(point["lr"])
                                                / math.log10(old["lr"]), rel=1e-5)
    assert s["lr"] != pytest.approx(point["lr"], rel=1e-3)
    assert logit(s["momentum"]) == pytest.approx(logit(before["momentum"]) * logit(point["momentum"])
                                                 / logit(old["momentum"]), rel=1e-4)


def test_paper_statistic_of_bayesopt_is_the_best_test_seen_by_any_evaluation():
    """Optimistic, selected on test: the lowest test metric logged by any evaluation, not the test metric of
    the best evaluation by validation loss."""
    rows = []
    for valid, test, lowest, diverged in ((2.0, 30.0, 12.0, False), (1.0, 20.0, 18.0, False),
                                          (float("nan"), float("nan"), 5.0, True), (3.0, 40.0, 39.0, False)):
        add_evaluation(rows, {"new_weight_steps": 10, "new_hyper_steps": 1, "valid_loss": valid, "test_metric": test,
                              "min_test_metric": lowest, "diverged": diverged})
    assert rows[-1]["best_test_metric"] == 20.0            # honest: test at the best validation loss
    assert paper_test_metrics(rows, "bayesopt", 400) == [5.0]   # the lowest logged, a diverged run's too
    rows[2]["min_test_metric"] = float("nan")
    assert paper_test_metrics(rows, "bayesopt", 400) == [12.0]
    assert PAPER_STATISTICS["bayesopt"] == "best test seen"


def test_lowest_test_metric_falls_back_to_the_evaluations_history(tmp_path):
    from onepass.search.bayesopt import lowest_test_metric

    (tmp_path / "history.csv").write_text("step,test_metric\n100,5.0\n200,nan\n300,2.5\n400,3.0\n")
    assert lowest_test_metric(tmp_path, {"test_metric": 3.0}) == 2.5
    assert lowest_test_metric(tmp_path, {"test_metric": 1.0}) == 1.0
    assert math.isnan(lowest_test_metric(tmp_path / "none", {"test_metric": float("nan")}))


def test_bayesopt_evaluations_track_the_test_minimum_over_every_weight_step(data_dir, tmp_path):
    """track_min_test (set for BayesOpt's evaluations) keeps the running minimum of the test metric over the
    initial weights and every weight step: checked against a plain loop, the same run with one weight step
    per hyperparameter step logging every step, and lower than what its logged history alone shows."""
    common = {"hyperparameter_steps": 4, "log_every": 10, "track_min_test": True, "keep_checkpoint": True}
    tracked = train_run("uci_energy", "Random_Validation", 0, 0.1, 1e-4, 0.99, data_dir, tmp_path / "tracked",
                        overrides=common)
    plain = train_run("uci_energy", "Random_Validation", 0, 0.1, 1e-4, 0.99, data_dir, tmp_path / "plain",
                      overrides={"hyperparameter_steps": 40, "update_interval": 1, "log_every": 1})
    with open(tmp_path / "plain" / "history.csv", newline="") as f:
        every = [float(r["test_metric"]) for r in csv.DictReader(f)]
    assert len(every) == 41   # the initial weights and each of the 40 weight steps
    lowest = math.inf
    for value in every:        # the running minimum, by a plain loop
        lowest = min(lowest, value)
    assert tracked["min_test_metric"] == pytest.approx(lowest, rel=1e-6)
    with open(tmp_path / "tracked" / "history.csv", newline="") as f:
        logged = [float(r["test_metric"]) for r in csv.DictReader(f)]
    assert len(logged) == 5 and tracked["min_test_metric"] < min(logged)
    assert "min_test_metric" not in plain
    # kept in the checkpoint: the run started again from its finished checkpoint writes the same minimum
    again = train_run("uci_energy", "Random_Validation", 0, 0.1, 1e-4, 0.99, data_dir, tmp_path / "tracked",
                      overrides=common)
    assert again["min_test_metric"] == tracked["min_test_metric"]
    from onepass.search.bayesopt import lowest_test_metric
    assert lowest_test_metric(tmp_path / "tracked", tracked) == tracked["min_test_metric"]


def test_paper_statistic_of_asha_and_pbt_is_every_finished_trials_final_test_metric():
    rows = []
    reports = [  # (trial, hyper_step, test_metric, diverged)
        (0, 1, 9.0, False), (1, 1, 8.0, False), (0, 4, 3.0, False), (2, 1, 7.0, False),   # 2 stopped at 1
        (1, 2, float("nan"), True), (1, 4, float("nan"), True),                          # 1 diverged, idled on
        (3, 4, 6.0, False), (0, 4, 2.0, False)]                                          # 0: a later report
    for trial, step, test, diverged in reports:
        add_evaluation(rows, {"trial": trial, "hyper_step": step, "test_metric": test, "diverged": diverged,
                              "valid_loss": test, "new_weight_steps": 10, "new_hyper_steps": 1})
    values = paper_test_metrics(rows, "asha", 4)
    assert values[0] == 2.0 and math.isnan(values[1]) and values[2:] == [6.0]
    assert paper_test_metrics(rows, "pbt", 5) == []


def test_best_so_far_ignores_diverged_evaluations():
    rows = []
    base = {"new_weight_steps": 10, "new_hyper_steps": 1, "test_metric": 0.0}
    for valid, diverged in ((2.0, False), (float("nan"), True), (1.0, False), (3.0, False)):
        add_evaluation(rows, {**base, "valid_loss": valid, "diverged": diverged, "test_metric": valid * 10})
    assert [r["best_valid_loss"] for r in rows] == [2.0, 2.0, 1.0, 1.0]
    assert [r["best_test_metric"] for r in rows] == [20.0, 20.0, 10.0, 10.0]
    assert [r["cumulative_weight_steps"] for r in rows] == [10, 20, 30, 40]


# ---- ASHA and PBT on Ray, as jobs ---------------------------------------------------------------------------
@pytest.fixture
def marker():
    """A short fresh TMPDIR for one search job: every process its Ray starts carries it."""
    path = tempfile.mkdtemp(prefix="osr-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ray_processes(marker: str) -> list:
    """Live processes started by the job that had TMPDIR=marker (Ray's own and its workers)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if marker in " ".join(p.info["cmdline"] or []) or p.environ().get("TMPDIR") == marker:
                found.append(p)
        except psutil.Error:
            pass
    return found


def search_job(algorithm, data_dir, out, marker, settings, seed=0, wait=True):
    cmd = [sys.executable, "-m", "onepass.search", "--dataset", "uci_energy", "--algorithm", algorithm,
           "--seed", str(seed), "--lr", "0.001", "--weight-decay", "0.0001", "--momentum", "0.5",
           "--data-dir", str(data_dir), "--out", str(out), "--threads", "2", "--quiet"]
    for setting in settings:
        cmd += ["--set", setting]
    env = {**os.environ, "TMPDIR": marker, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return output


def assert_no_ray_left(marker):
    deadline = time.time() + 5
    while ray_processes(marker) and time.time() < deadline:
        time.sleep(0.2)
    left = ray_processes(marker)
    assert not left, [(p.pid, p.name()) for p in left]
    assert os.listdir(marker) == []  # Ray's session directory is gone too


@pytest.mark.slow
def test_asha_end_to_end(data_dir, tmp_path, marker):
    settings = ["search_trials=4", "hyperparameter_steps=6", "asha_grace_period=2", "asha_reduction_factor=3",
                "search_time_unit=hyper_steps"]
    search_job("ASHA", data_dir, tmp_path / "asha", marker, settings)
    assert_no_ray_left(marker)
    m = json.loads((tmp_path / "asha" / "metrics.json").read_text())
    rows = check_record(tmp_path / "asha", m)
    assert m["algorithm"] == "ASHA" and m["inner_algorithm"] == "Random_Validation" and "ray" in m["versions"]
    trials = {int(r["run_seed"]) for r in rows}  # seed 0: trial i trains with seed i
    assert trials == {0, 1, 2, 3} and {int(r["trial"]) for r in rows} == trials
    steps = {t: [r["hyper_step"] for r in rows if r["run_seed"] == t] for t in trials}
    assert all(s == list(range(1, len(s) + 1)) for s in steps.values())  # a report every hyperparameter step
    assert max(len(s) for s in steps.values()) == 6
    # the worst point of seed 0 (lr 8e-4, far behind at the first rung) starts after two others have
    # recorded that rung, so ASHA stops it there
    assert steps[3] == [1, 2]
    assert all(len({(r["lr"], r["momentum"]) for r in rows if r["run_seed"] == t}) == 1 for t in trials)
    assert (tmp_path / "asha" / "ray").is_dir()


@pytest.mark.slow
def test_pbt_end_to_end_exploits_and_perturbs(data_dir, tmp_path, marker):
    settings = ["search_trials=4", "hyperparameter_steps=6", "pbt_perturbation_interval=3",
                "pbt_quantile_fraction=0.5", "search_time_unit=hyper_steps", "pbt_synch=true"]
    search_job("PBT", data_dir, tmp_path / "pbt", marker, settings)
    assert_no_ray_left(marker)
    m = json.loads((tmp_path / "pbt" / "metrics.json").read_text())
    rows = check_record(tmp_path / "pbt", m)
    assert {int(r["trial"]) for r in rows} == {0, 1, 2, 3}
    assert all(len([r for r in rows if r["trial"] == t]) == 6 for t in range(4))
    # Random's hyperparameters are fixed within a run: a change inside a trial is PBT's exploit + explore,
    # which continues from the copied trial's state (its weight steps go on from the donor's)
    changed = [t for t in range(4) if len({r["lr"] for r in rows if r["trial"] == t}) > 1]
    assert changed
    assert metrics_checkpoints(tmp_path / "pbt")
    assert m["weight_steps"] == 4 * 6 * 10


def metrics_checkpoints(out: Path) -> list:
    return list((out / "ray").glob("*/checkpoint_*/trial.pt"))


@pytest.mark.slow
def test_pbt_whose_every_trial_diverges_reports_nan(data_dir, tmp_path, marker):
    """Every trial diverges: the record is NaN with the penalty as score. The perturbation interval lies
    beyond the run: whether asynchronous PBT makes one diverged trial exploit another (and replay steps from
    its checkpoint) depends on the order in which Ray sees their equal scores, so with exploits the number
    of reports would depend on timing (PBT's exploits are tested on their own)."""
    settings = ["search_trials=2", "hyperparameter_steps=4", "pbt_perturbation_interval=8",
                "divergence_threshold=1e-6", "search_time_unit=hyper_steps"]
    output = search_job("PBT", data_dir, tmp_path / "pbt", marker, settings)
    assert "every evaluation DIVERGED" in output
    assert_no_ray_left(marker)
    check_all_diverged(tmp_path / "pbt", 2 * 4)  # diverged trials idle and report until the end


@pytest.mark.slow
def test_terminated_search_leaves_no_ray_process(data_dir, tmp_path, marker):
    """SIGTERM (a SLURM time limit, a cancelled job) while trials run: Ray is stopped all the same."""
    out = tmp_path / "asha"
    proc = search_job("ASHA", data_dir, out, marker, ["search_trials=4", "hyperparameter_steps=100000"],
                      wait=False)
    try:
        deadline = time.time() + 120
        while not list((out / "ray").glob("*/")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        time.sleep(3)
        assert proc.poll() is None and ray_processes(marker)  # Ray runs (and the marker finds it)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-4000:]
    assert_no_ray_left(marker)
    assert not (out / "metrics.json").exists()


def test_baselines_conda_env_matches_pyproject(repo_root):
    import tomllib

    import yaml
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((repo_root / "envs" / "baselines.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    norm = lambda reqs: sorted(r.replace(" ", "").lower() for r in reqs)  # noqa: E731
    assert norm(pip) == norm(project["dependencies"] + project["optional-dependencies"]["baselines"])


def test_a_chunk_plan_of_a_search_runs_through_the_command(data_dir, tmp_path):
    """The command the study's jobs run (python -m onepass.search --plan --runs-dir): each repetition of the
    chunk writes its run directory, with the plan's settings."""
    import yaml

    from onepass import study
    from test_pipeline import ROOT, TINY

    overrides = {k: int(v) for k, v in (item.split("=") for item in TINY_BO)}
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())   # extended as Snakemake does
    config.update({k: v for k, v in TINY.items() if k != "sweep"}, algorithms={"uci_energy": ["BayesOpt"]}, repetitions={},
                  overrides={"uci_energy": {"BayesOpt": overrides}})
    config["sweep"]["initialisations"] = TINY["sweep"]["initialisations"]
    config = study.validate(config, yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    plan = tmp_path / "seeds0-0.json"
    plan.write_text(json.dumps(study.chunk_plan(config, "uci_energy", "BayesOpt", [0])))
    code = main(["--plan", str(plan), "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
                 "--threads", "1", "--quiet"])
    assert code == 0
    metrics = json.loads((tmp_path / "runs" / "seed0" / "metrics.json").read_text())
    assert metrics["algorithm"] == "BayesOpt" and metrics["seed"] == 0
    assert len(evaluations(tmp_path / "runs" / "seed0")) == 5   # 3 initial + 2 guided points
