"""Collection, paper tables, figures and analysis pages on synthetic run directories."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from onepass import analysis, catalog, collection, curves, figures, report_page, tables
from onepass.plans import PLAN_FORMAT

HISTORY_COLUMNS = ["step", "hyper_step", "time_s", "train_loss", "valid_loss", "test_loss",
                   "test_metric", "lr", "weight_decay", "momentum"]


SETTINGS = {"hyperparameter_steps": 5, "optimise": ["lr"]}  # what the fake runs record, and their plan expects


def initial(seed):
    """The fake initialisation of a seed: (lr, weight decay, momentum)."""
    return 10 ** -(1 + seed % 5), 10 ** -(2 + seed % 4), (seed % 10) / 10


def fake_plan(algorithms, seeds, repetitions=None) -> dict:
    """A dataset's plan (as onepass.study writes it) of these algorithms and seeds."""
    n, repetitions = len(seeds), repetitions or {}
    inits = [{"seed": s, **dict(zip(("lr", "weight_decay", "momentum"), initial(s))), "lr_step_factor": 0.99}
             for s in range(n)]
    return {"format": PLAN_FORMAT, "study": "t", "dataset": "uci_energy", "device": "cpu",
            "initialisations": inits,
            "algorithms": {a: {"search": catalog.algorithm(a).search,
                               "seeds": list(range(min(n, repetitions.get(a, n)))), "overrides": {},
                               "member_settings": ["lr_step_factor"] if a == "Random_SteppedLR" else [],
                               "settings": SETTINGS} for a in algorithms}}


def collect(runs_dir, algorithms, seeds, repetitions=None):
    return collection.collect(fake_plan(algorithms, seeds, repetitions), runs_dir)


def fake_run(runs_dir, algorithm, seed, final, valid=None, diverged=False, steps=5):
    """Write metrics.json + history.csv as onepass.train does."""
    out = runs_dir / algorithm / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    lr0, wd0, m0 = initial(seed)
    nan = float("nan")
    curve = np.linspace(final * 3, final, steps + 1)
    step = np.arange(steps + 1) * 10
    if diverged:  # as onepass.train writes it: stops early, a last NaN row at an off-grid step
        curve, step = curve[:3], step[:3]
        curve[-1], step[-1] = nan, step[-2] + 7
        steps = 2
    history = pd.DataFrame({
        "step": step, "hyper_step": np.arange(steps + 1),
        "time_s": np.arange(steps + 1) * 0.1 + seed * 0.01, "train_loss": curve / 100,
        "valid_loss": curve / 90, "test_loss": curve / 100, "test_metric": curve,
        "lr": lr0 * np.linspace(1, 2, steps + 1), "weight_decay": wd0 * np.ones(steps + 1),
        "momentum": m0 * np.ones(steps + 1)})
    history[HISTORY_COLUMNS].to_csv(out / "history.csv", index=False)
    metrics = {
        "dataset": "uci_energy", "family": "uci", "task": "regression", "algorithm": algorithm,
        "seed": seed, "init_lr": lr0, "init_weight_decay": wd0, "init_momentum": m0,
        "final_lr": 2 * lr0, "final_weight_decay": wd0, "final_momentum": m0,
        "train_loss": nan if diverged else final / 100,
        "valid_loss": nan if diverged else (valid if valid is not None else final / 90),
        "test_loss": nan if diverged else final / 100, "test_metric": nan if diverged else final,
        "test_mse_unnormalised": nan if diverged else final, "test_accuracy": None,
        "test_perplexity": None, "weight_steps": steps * 10, "hyperparameter_steps": steps,
        "wall_time_s": 1.5, "device": "cpu", "diverged": diverged, "slurm_job_id": None,
        "versions": {"onepass": "0.1.0"},
        "settings": {**SETTINGS, **({"lr_step_factor": 0.99} if algorithm == "Random_SteppedLR" else {})},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.fixture()
def study(tmp_path):
    """uci_energy: Random (one diverged), Ours_LR (better), Random_Validation (6 seeds),
    Random_SteppedLR with seed 2 missing."""
    runs = tmp_path / "runs" / "uci_energy"
    for seed, final in enumerate([10.0, 20.0, 30.0]):
        fake_run(runs, "Random", seed, final, diverged=(seed == 2))
        fake_run(runs, "Ours_LR", seed, final / 4)
    for seed in range(2):
        fake_run(runs, "Random_SteppedLR", seed, 15.0 + seed)
    valid = [3.0, 1.0, 2.0, float("nan"), 5.0, 4.0]
    for seed, (final, v) in enumerate(zip([9.0, 8.0, 7.0, 6.0, 5.0, 4.0], valid)):
        fake_run(runs, "Random_Validation", seed, final, valid=v)
    algorithms = ["Random", "Random_SteppedLR", "Random_Validation", "Ours_LR"]
    collected = collect(runs, algorithms, range(6))
    return runs, collected


def test_collect_marks_done_diverged_missing(study, tmp_path):
    runs_dir, runs = study
    assert len(runs) == 4 * 6
    counts = collection.status_counts(runs)
    assert counts == {"done": 13, "diverged": 1, "stale": 0, "missing": 10, "total": 24}
    r = runs.set_index(["algorithm", "seed"])
    assert r.loc[("Random", 2), "status"] == "diverged"
    assert r.loc[("Random_SteppedLR", 2), "status"] == "missing"
    assert r.loc[("Ours_LR", 1), "test_metric"] == 5.0
    assert r.loc[("Random_SteppedLR", 0), "lr_step_factor"] == 0.99
    path = tmp_path / "tables" / "runs.tsv"
    collection.write_runs(runs, path)
    first = path.read_text().splitlines()[0]
    assert first == "# status: 13 done, 1 diverged, 0 stale, 10 missing of 24 runs"
    back = collection.read_runs(path)
    assert len(back) == 24 and back["status"].tolist() == runs["status"].tolist()
    assert math.isnan(back.set_index(["algorithm", "seed"]).loc[("Random", 2), "test_metric"])


def test_statistics_ignore_nans():
    values = [1.0, 2.0, float("nan"), 3.0, 10.0]
    mean, se = tables.mean_se(values)
    assert mean == 4.0 and se == pytest.approx(np.std([1, 2, 3, 10], ddof=1) / 2)
    median, mse = tables.median_se(values)
    assert median == 2.5 and 0 < mse < 5
    assert tables.median_se(values) == (median, mse)  # deterministic bootstrap
    assert tables.best(values) == 1.0
    assert all(math.isnan(v) for v in (*tables.mean_se([float("nan")]), tables.best([])))
    assert tables.median_se([4.0]) == (4.0, 0.0)


def test_median_se_matches_bootstrap_theory():
    x = np.random.default_rng(1).normal(size=400)
    _, se = tables.median_se(x)
    # SE of the median of a normal sample ~ 1.2533 * sigma / sqrt(n)
    assert se == pytest.approx(1.2533 / 20, rel=0.25)


def test_bootstrap_estimator_on_a_fixed_sample():
    """The paper's table estimator (its paper_plots.py:443-458): 1000 bootstrap resamples of the finite values;
    mean of the resamples' means ± their (population) std, mean of their medians ± their std. Checked against a
    plain loop over the same resample indices (numpy's default_rng(0)), with the standard library's statistics."""
    import statistics

    values = [3.0, 1.0, float("nan"), 4.0, 1.0, 5.0, 9.0, 2.0]
    finite = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    rows = np.random.default_rng(0).integers(0, len(finite), size=(1000, len(finite)))
    means = [statistics.fmean(finite[i] for i in row) for row in rows]
    medians = [statistics.median(finite[i] for i in row) for row in rows]
    got = tables.bootstrap(values)
    expected = (statistics.fmean(means), statistics.pstdev(means), statistics.fmean(medians),
                statistics.pstdev(medians))
    assert got == pytest.approx(expected, rel=1e-12)
    # and what it estimates: the sample mean (25/7), and its SE sigma/sqrt(n) (sigma the population std)
    assert got[0] == pytest.approx(25 / 7, abs=4 * got[1] / math.sqrt(1000))
    assert got[1] == pytest.approx(statistics.pstdev(finite) / math.sqrt(7), rel=0.1)
    assert 2.0 < got[2] < 4.0 and got[2] != statistics.median(finite)   # not the sample median (3.0)
    assert tables.bootstrap(values) == got                                 # deterministic
    assert tables.bootstrap([5.0, 5.0]) == (5.0, 0.0, 5.0, 0.0)
    assert all(math.isnan(v) for v in tables.bootstrap([float("nan")]))
    # the sample estimator stays a setting: the sample mean ± SE and the sample median ± bootstrap SE
    sample = tables.estimate(values, "sample")
    assert sample[0] == pytest.approx(25 / 7) and sample[2] == 3.0
    assert sample == (*tables.mean_se(values), *tables.median_se(values))
    with pytest.raises(ValueError, match="table statistic must be one of bootstrap, sample, got 'mode'"):
        tables.estimate(values, "mode")


def test_summaries_use_the_papers_estimator_by_default(study):
    _, runs = study
    s = tables.summarise(runs).set_index("algorithm")
    ours = [2.5, 5.0, 7.5]   # Ours_LR's final test metrics
    assert (s.loc["Ours_LR", "mean"], s.loc["Ours_LR", "mean_se"], s.loc["Ours_LR", "median"],
            s.loc["Ours_LR", "median_se"]) == pytest.approx(tables.bootstrap(ours), rel=1e-12)
    assert set(s["statistic"]) == {"bootstrap"}
    sample = tables.summarise(runs, statistic="sample").set_index("algorithm")
    assert sample.loc["Ours_LR", "mean"] == 5.0 and sample.loc["Ours_LR", "median"] == 5.0
    assert set(sample["statistic"]) == {"sample"}
    assert "mean of their medians" in tables.paper_markdown(s.reset_index())


def _validation_runs(valid, status):
    return pd.DataFrame({"algorithm": "Random_Validation", "seed": range(len(valid)), "status": status,
                         "valid_loss": valid, "test_metric": [10.0 + i for i in range(len(valid))]})


def test_three_batched_draws_random_triples_of_the_runs_that_did_not_diverge():
    """The paper's Random (3-batched): a random order of the Random_Validation runs that did not diverge, cut
    into triples, each keeping its best final validation loss; deterministic given the seed."""
    nan = float("nan")
    valid = [5.0, nan, 3.0, 8.0, nan, 1.0, 7.0, 2.0, 6.0, 4.0]
    status = ["done", "diverged", "done", "done", "diverged", "done", "done", "done", "done", "done"]
    runs = _validation_runs(valid, status)
    done = [0, 2, 3, 5, 6, 7, 8, 9]   # seeds of the finished runs
    for seed in (0, 1, 7):
        order = np.random.default_rng(seed).permutation(len(done))
        triples = [[done[i] for i in order[0:3]], [done[i] for i in order[3:6]]]   # 8 runs: two triples
        expected = [min(t, key=lambda s: valid[s]) for t in triples]
        got = tables.best_of_groups(runs, "Random_Validation", 3, "random", seed)
        assert got["seed"].tolist() == expected
        assert got["test_metric"].tolist() == [10.0 + s for s in expected]
        assert set(got["status"]) == {"done"}
        assert tables.best_of_groups(runs, "Random_Validation", 3, "random", seed).equals(got)
    # the catalogue's Random (3-batched) is this design
    assert catalog.algorithm("Random_3Batched").derived == {"from": "Random_Validation", "best_of": 3,
                                                            "groups": "random", "seed": 0}
    assert tables.derived_populations(runs)["Random_3Batched"].equals(
        tables.best_of_groups(runs, "Random_Validation", 3, "random", 0))
    # a diverged run never takes a slot: all 6 finished runs of a population with 3 diverged make 2 triples
    six = _validation_runs([1.0, nan, 2.0, nan, 3.0, 4.0, nan, 5.0, 6.0],
                           ["done", "diverged"] * 2 + ["done", "done", "diverged", "done", "done"])
    assert len(tables.best_of_groups(six, "Random_Validation", 3)) == 2


def test_three_batched_keeps_best_validation_of_each_group(study):
    _, runs = study
    batched = tables.best_of_groups(runs, "Random_Validation", 3, "by_seed")
    # groups (0,1,2): valid 3,1,2 -> seed 1 (test 8); (3,4,5): valid NaN,5,4 -> seed 5 (test 4)
    assert batched["seed"].tolist() == [1, 5]
    assert batched["test_metric"].tolist() == [8.0, 4.0]


def test_three_batched_skips_incomplete_groups(study):
    _, runs = study
    cut = runs[~((runs["algorithm"] == "Random_Validation") & (runs["seed"] == 4))]
    assert tables.best_of_groups(cut, "Random_Validation", 3, "by_seed")["seed"].tolist() == [1]


def test_summary_rows_in_paper_order(study):
    _, runs = study
    summary = tables.summarise(runs, statistic="sample")
    assert summary["algorithm"].tolist() == ["Random", "Random_SteppedLR", "Random_3Batched",
                                             "Random_Validation", "Ours_LR"]
    s = summary.set_index("algorithm")
    assert s.loc["Random", "mean"] == 15.0 and s.loc["Random", "diverged"] == 1
    assert s.loc["Ours_LR", "median"] == 5.0 and s.loc["Ours_LR", "best"] == 2.5
    assert s.loc["Random_3Batched", "label"] == "Random (3-batched)"
    assert s.loc["Random_3Batched", "runs"] == 2   # its random triples: see test_three_batched_draws_random_...
    triples = tables.best_of_groups(runs, "Random_Validation", 3)
    assert s.loc["Random_3Batched", "best"] == triples["test_metric"].min()
    assert s.loc["Random_SteppedLR", "missing"] == 4


def test_paper_tables(study, tmp_path):
    _, runs = study
    summary_path = tmp_path / "summary.tsv"
    tables.summarise(runs, statistic="sample").to_csv(summary_path, sep="\t", index=False)
    other = tables.summarise(runs.assign(dataset="fashion_mnist"), statistic="sample")
    other_path = tmp_path / "fm.tsv"
    other.to_csv(other_path, sep="\t", index=False)
    md, tsv = tmp_path / "paper.md", tmp_path / "paper.tsv"
    tables.write_paper_tables([summary_path, other_path], md, tsv)
    text = md.read_text()
    assert text.index("## Table 1") < text.index("### UCI Energy") < text.index("## Table 2")
    assert text.index("## Table 2") < text.index("### Fashion-MNIST (test cross-entropy)")
    # a title names the datasets the study has (here Fashion-MNIST alone), not the paper's three
    assert "## Table 2: Fashion-MNIST\n" in text and "Penn Treebank" not in text
    assert "| Method | Mean ± SE | Median ± SE | Best | Runs (diverged) |" in text
    assert "Random (3-batched)" in text and "Random (validation)" not in text
    # the paper's format: each SE to one significant figure, its value to that place, Best to 3 figures
    assert re.search(r"\| Ours \(WD\+LR\) \| \*\*5\*\* ± 1 \| \*\*5\*\* ± [0-9] \| \*\*2\.50\*\* \|", text)
    assert "| Random | 15 ± 5 |" in text
    assert len(pd.read_csv(tsv, sep="\t")) == 10


def _lab(colour):
    """CIE L*a*b* of a hex colour (sRGB, D65 white)."""
    from matplotlib.colors import to_rgb
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_colours_come_from_the_algorithm_files_and_are_distinct():
    algorithms = catalog.algorithms()
    # every pair of algorithms differs clearly in colour (CIE76 distance >= 25; 2.3 is just noticeable)
    names = list(algorithms)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            distance = np.linalg.norm(_lab(algorithms[a].colour) - _lab(algorithms[b].colour))
            assert distance >= 25, (a, b, distance)
    assert catalog.colour("Ours_LR") == algorithms["Ours_LR"].colour
    assert catalog.label("Ours_HDLR_Momentum") == "Ours (WD+HDLR+M)"
    assert catalog.label("LongDiffThroughOpt_Full") == "Long Diff-through-Opt (Full)"
    assert catalog.label("Random_Validation") == "Random (validation)"
    assert {catalog.linestyle(a) for a in algorithms if catalog.is_search(a)} == {"--"}


@pytest.mark.parametrize("kind", figures.KINDS)
def test_each_figure_is_written_as_png_and_svg(study, tmp_path, kind):
    runs_dir, runs = study
    png, svg = tmp_path / f"{kind}.png", tmp_path / f"{kind}.svg"
    figures.make(kind, runs, runs_dir, [png, svg])
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert b"<svg" in svg.read_bytes()[:1000]


def test_figures_cope_with_no_finished_runs(tmp_path):
    runs = collect(tmp_path / "none", ["Random", "Ours_LR"], range(2))
    for kind in figures.KINDS:
        figures.make(kind, runs, tmp_path / "none", [tmp_path / f"{kind}.png"])
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000


def test_analysis_page_is_self_contained(study, tmp_path):
    runs_dir, runs = study
    runs_path, summary_path = tmp_path / "runs.tsv", tmp_path / "summary.tsv"
    collection.write_runs(runs, runs_path)
    tables.summarise(runs).to_csv(summary_path, sep="\t", index=False)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(fake_plan(["Random", "Random_SteppedLR", "Random_Validation", "Ours_LR"],
                                              range(6))))
    sweep_path = tmp_path / "sweep.tsv"
    pd.DataFrame([{"key": "lr", "type": "log_uniform", "range": "[1e-06, 0.1]"}]).to_csv(
        sweep_path, sep="\t", index=False)
    pngs = []
    for kind in figures.KINDS:
        pngs.append(tmp_path / f"{kind}.png")
        figures.make(kind, runs, runs_dir, [pngs[-1]])
    out = tmp_path / "page" / "uci_energy.html"
    report_page.write(runs_path, summary_path, sweep_path, plan_path, pngs, out)
    page = out.read_text()
    assert page.count("data:image/png;base64,") == len(figures.KINDS)
    assert not re.search(r'src="(?!data:)', page)
    for heading in ("Configuration", "Summary", *(f.title for f in figures.FIGURES.values())):
        assert heading in page
    assert "13 done, 1 diverged, 0 stale, 10 missing of 24 runs" in page
    assert "log_uniform" in page and "Random (3-batched)" in page


def test_cli_chain(study, tmp_path):
    runs_dir, _ = study
    t = tmp_path / "t"
    t.mkdir()
    (t / "plan.json").write_text(json.dumps(fake_plan(["Random", "Ours_LR"], range(3))))
    analysis.main(["collect", "--plan", str(t / "plan.json"), "--runs-dir", str(runs_dir), "--out",
                   str(t / "runs.tsv")])
    analysis.main(["summary", "--runs", str(t / "runs.tsv"), "--out", str(t / "summary.tsv")])
    analysis.main(["paper-tables", "--summaries", str(t / "summary.tsv"),
                   "--markdown", str(t / "paper.md"), "--tsv", str(t / "paper.tsv")])
    analysis.main(["figure", "--kind", "edf", "--runs", str(t / "runs.tsv"),
                   "--runs-dir", str(runs_dir), "--out", str(t / "edf.png"), str(t / "edf.svg")])
    assert (t / "runs.tsv").read_text().startswith("# status: 5 done, 1 diverged, 0 stale, 0 missing")
    assert "Ours (WD+LR)" in (t / "paper.md").read_text()
    assert (t / "edf.svg").exists()


def test_curves_are_held_on_a_common_grid():
    """Runs logged at different steps (a diverged one ending in NaN) align by value held from one
    logged step to the next, not by row."""
    h = pd.DataFrame({"seed": [0, 0, 0, 1, 1],
                      "step": [0, 10, 20, 0, 7],
                      "test_metric": [5.0, 3.0, 1.0, 4.0, np.nan]})
    grid = np.array([0.0, 5.0, 7.0, 10.0, 20.0])
    held = curves.held_on_grid(h, "step", grid)
    np.testing.assert_array_equal(held[:, 0], [5.0, 5.0, 5.0, 3.0, 1.0])
    np.testing.assert_array_equal(held[:, 1], [4.0, 4.0, np.nan, np.nan, np.nan])


# ---- black-box searches (BayesOpt, ASHA, PBT): fewer repetitions, cumulative-time histories ---------


def fake_search(runs_dir, algorithm, seed, bests, per_evaluation_s=20.0, steps=4000):
    """A search's outputs as onepass.search writes them: metrics.json of the best evaluation and a
    history of the best-so-far (by validation) test metric against cumulative steps and time."""
    out = fake_run(runs_dir, algorithm, seed, bests[-1])
    n = len(bests)
    history = pd.DataFrame({
        "step": steps * np.arange(1, n + 1), "hyper_step": steps // 10 * np.arange(1, n + 1),
        "time_s": per_evaluation_s * np.arange(1, n + 1) + seed, "train_loss": np.array(bests) / 100,
        "valid_loss": np.array(bests) / 90, "test_loss": np.array(bests) / 100,
        "test_metric": bests, "lr": 1e-2, "weight_decay": 1e-4, "momentum": 0.5})
    history[HISTORY_COLUMNS].to_csv(out / "history.csv", index=False)
    return out


def test_collect_takes_each_algorithms_repetitions(study, tmp_path):
    runs_dir, _ = study
    for seed in range(2):
        fake_search(runs_dir, "BayesOpt", seed, [9.0, 5.0, 4.0 + seed])
    algorithms = ["Random", "Ours_LR", "BayesOpt"]
    runs = collect(runs_dir, algorithms, range(3), {"BayesOpt": 2})
    assert runs.groupby("algorithm").size().to_dict() == {"BayesOpt": 2, "Ours_LR": 3, "Random": 3}
    assert collection.status_counts(runs) == {"done": 7, "diverged": 1, "stale": 0, "missing": 0, "total": 8}
    # without the repetitions, BayesOpt's third seed would count as missing
    assert collection.status_counts(collect(runs_dir, algorithms, range(3)))["missing"] == 1
    out = tmp_path / "t" / "runs.tsv"
    out.parent.mkdir()
    (out.parent / "plan.json").write_text(json.dumps(fake_plan(algorithms, range(3), {"BayesOpt": 2})))
    analysis.main(["collect", "--plan", str(out.parent / "plan.json"), "--runs-dir", str(runs_dir),
                   "--out", str(out)])
    assert out.read_text().startswith("# status: 7 done, 1 diverged, 0 stale, 0 missing of 8 runs")
    summary = tables.summarise(collection.read_runs(out)).set_index("algorithm")
    assert summary.loc["BayesOpt", "label"] == "Bayesian Optimisation"
    assert summary.loc["BayesOpt", "runs"] == 2 and summary.loc["BayesOpt", "missing"] == 0
    assert summary.loc["BayesOpt", "best"] == 4.0


def add_paper_statistic(runs_dir, algorithm, seed, statistic, values):
    path = runs_dir / algorithm / f"seed{seed}" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "paper_statistic": statistic, "paper_test_metrics": values}))


def test_searches_show_the_papers_statistic_beside_the_honest_one(study, tmp_path):
    """BayesOpt: per repetition the best test metric seen by any evaluation (here 2.0 and 3.0, below the test
    metrics at the best validation loss, 4.0 and 5.0); ASHA: the final test metric of every finished trial,
    pooled (a NaN trial counted as diverged)."""
    runs_dir, _ = study
    for seed in range(2):
        fake_search(runs_dir, "BayesOpt", seed, [9.0, 5.0, 4.0 + seed])
        add_paper_statistic(runs_dir, "BayesOpt", seed, "best test seen", [2.0 + seed])
    fake_search(runs_dir, "ASHA", 0, [9.0, 6.0])
    add_paper_statistic(runs_dir, "ASHA", 0, "finished trials", [7.0, 5.0, float("nan"), 6.0])
    algorithms = ["Random", "BayesOpt", "ASHA"]
    out = tmp_path / "t" / "runs.tsv"
    out.parent.mkdir()
    (out.parent / "plan.json").write_text(json.dumps(fake_plan(algorithms, range(3), {"BayesOpt": 2, "ASHA": 1})))
    analysis.main(["collect", "--plan", str(out.parent / "plan.json"), "--runs-dir", str(runs_dir),
                   "--out", str(out)])
    summary = tables.summarise(collection.read_runs(out), statistic="sample")
    assert list(summary["algorithm"]) == ["Random", "BayesOpt", "BayesOpt@paper", "ASHA", "ASHA@paper"]
    s = summary.set_index("algorithm")
    assert s.loc["BayesOpt", "label"] == "Bayesian Optimisation (test at best validation)"
    assert (s.loc["BayesOpt", "mean"], s.loc["BayesOpt", "best"]) == (4.5, 4.0)
    assert s.loc["BayesOpt@paper", "label"] == "Bayesian Optimisation (paper: best test seen)"
    assert (s.loc["BayesOpt@paper", "mean"], s.loc["BayesOpt@paper", "best"]) == (2.5, 2.0)
    assert s.loc["BayesOpt@paper", "mean_se"] == pytest.approx(0.5) and s.loc["BayesOpt@paper", "runs"] == 2
    assert s.loc["ASHA", "label"] == "ASHA (test at best validation)" and s.loc["ASHA", "mean"] == 6.0
    assert s.loc["ASHA@paper", "label"] == "ASHA (paper: all finished trials)"
    assert (s.loc["ASHA@paper", "mean"], s.loc["ASHA@paper", "median"], s.loc["ASHA@paper", "best"]) == (6.0, 6.0,
                                                                                                           5.0)
    assert s.loc["ASHA@paper", "mean_se"] == pytest.approx(np.std([7.0, 5.0, 6.0], ddof=1) / np.sqrt(3))
    assert (s.loc["ASHA@paper", "runs"], s.loc["ASHA@paper", "diverged"]) == (4, 1)
    assert s.loc["Random", "label"] == "Random"          # not a search: one row, as before
    summary_path = tmp_path / "summary.tsv"
    summary.to_csv(summary_path, sep="\t", index=False)
    md, tsv = tmp_path / "paper_tables.md", tmp_path / "paper_tables.tsv"
    analysis.main(["paper-tables", "--summaries", str(summary_path), "--markdown", str(md), "--tsv", str(tsv)])
    text = md.read_text()
    # the search tables have no bold (the paper's bold_best=False, paper_plots.py:508-533)
    assert "| Bayesian Optimisation (paper: best test seen) | 2.5 ± 0.5 |" in text
    assert "**" not in text.split("## Table 2: Bayesian Optimisation")[1]
    assert "| Bayesian Optimisation (test at best validation) |" in text and "| ASHA (paper: all finished trials) |" in text
    assert "ASHA@paper" in tsv.read_text()


def test_a_run_recorded_under_other_settings_is_stale_and_never_counted(study):
    runs_dir, _ = study
    metrics_path = runs_dir / "Ours_LR" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["settings"]["hyperparameter_steps"] = 7
    metrics_path.write_text(json.dumps(metrics))
    (runs_dir / "Ours_LR" / "seed2" / "metrics.json").write_text(json.dumps(
        {**json.loads((runs_dir / "Ours_LR" / "seed2" / "metrics.json").read_text()), "init_lr": 0.5}))
    runs = collect(runs_dir, ["Random", "Ours_LR"], range(3))
    r = runs.set_index(["algorithm", "seed"])
    assert r.loc[("Ours_LR", 1), "status"] == "stale" and "hyperparameter_steps" in r.loc[("Ours_LR", 1),
                                                                                          "stale_reason"]
    assert r.loc[("Ours_LR", 2), "status"] == "stale" and r.loc[("Ours_LR", 2), "stale_reason"] == \
        "initial lr differs"
    assert collection.status_line(runs) == "# status: 3 done, 1 diverged, 2 stale, 0 missing of 6 runs"
    s = tables.summarise(runs).set_index("algorithm")
    assert s.loc["Ours_LR", "stale"] == 2 and s.loc["Ours_LR", "done"] == 1
    assert s.loc["Ours_LR", "mean"] == 2.5 and s.loc["Ours_LR", "best"] == 2.5   # only seed 0 counts


def test_searches_are_named_and_match_their_configs():
    assert {a for a in catalog.algorithms() if catalog.is_search(a)} == {"BayesOpt", "ASHA", "ASHA_Ours", "PBT",
                                                                          "PBT_Ours"}
    assert catalog.label("ASHA_Ours") == "ASHA (Ours)" and catalog.label("PBT_Ours") == "PBT (Ours)"
    assert catalog.label("BayesOpt") == "Bayesian Optimisation"
    assert catalog.label("ASHA") == "ASHA" and catalog.label("PBT") == "PBT"
    # in the tables after the one-pass methods
    assert catalog.order(["PBT_Ours", "BayesOpt", "Random", "ASHA", "Ours_LR"]) == [
        "Random", "Ours_LR", "BayesOpt", "ASHA", "PBT_Ours"]


def test_time_comparison_with_searches(study, tmp_path):
    """Searches' best-so-far curves run against cumulative search time, far beyond one training
    run: the time axis turns logarithmic, their curves are dashed and a note says what they are."""
    runs_dir, _ = study
    fake_search(runs_dir, "BayesOpt", 0, [9.0, 5.0, 5.0, 2.0])
    fake_search(runs_dir, "BayesOpt", 1, [8.0, 8.0, 3.0, 3.0])
    fake_search(runs_dir, "PBT", 0, [7.0, 6.0], per_evaluation_s=4.0)
    runs = collect(runs_dir, ["Random", "Ours_LR", "BayesOpt", "PBT"], range(3), {"BayesOpt": 2, "PBT": 1})
    fig = figures.test_vs_time_by_validation(runs, runs_dir)
    median, best = fig.axes[:2]
    assert median.get_xscale() == best.get_xscale() == "log"  # 80 s of search against 0.5 s runs
    lines = {ln.get_label(): ln for ln in median.get_lines()}
    bayes = lines["Bayesian Optimisation"]
    assert bayes.get_linestyle() == "--" and lines["Ours (WD+LR)"].get_linestyle() == "-"
    x, y = bayes.get_xdata(), bayes.get_ydata()
    assert x.max() == pytest.approx(81.0)  # seed 1's last cumulative time
    assert y[-1] == pytest.approx(2.5)  # median of the final best-so-far values 2 and 3
    assert np.isnan(y[x < 20.0]).all()  # no evaluation finished yet
    bayes_best = {ln.get_label(): ln for ln in best.get_lines()}["Bayesian Optimisation"]
    best_x, best_y = bayes_best.get_xdata(), bayes_best.get_ydata()
    assert best_y[np.searchsorted(best_x, 60.5)] == 3.0  # seed 1 found 3 at 61 s, seed 0 has 5
    assert best_y[-1] == 2.0
    assert "cumulative search time" in median.get_xlabel()
    assert any("best-by-validation" in t.get_text() for t in fig.texts)
    figures.plt.close(fig)
    # without searches: a linear time axis and no note
    plain = figures.test_vs_time_by_validation(
        runs[~runs["algorithm"].isin([a for a in catalog.algorithms() if catalog.is_search(a)])], runs_dir)
    assert plain.axes[0].get_xscale() == "linear" and not plain.texts
    assert plain.axes[0].get_xlabel() == "training time (s)"
    figures.plt.close(plain)
    png = tmp_path / "test_vs_time_by_validation.png"
    figures.make("test_vs_time_by_validation", runs, runs_dir, [png])
    assert png.stat().st_size > 5000


def test_time_figure_caption_describes_searches():
    """The caption lives with the figure (the report's caption template shows it)."""
    text = figures.caption("test_vs_time_by_validation", "UCI Energy")
    assert "UCI Energy" in text and "lowest validation loss so far" in text and "cumulative search time" in text
    template = (Path(__file__).resolve().parents[1] / "workflow" / "report" / "figure.rst").read_text()
    assert template.strip() == "{{ snakemake.params.caption }}"


def test_numbers_are_rounded_to_what_their_standard_error_supports():
    assert tables.with_se(7.434, 8.1) == "7.4 ± 8.1"
    assert tables.with_se(7.434, 0.0123) == "7.434 ± 0.012"
    assert tables.with_se(1234.5, 123) == "1230 ± 120"
    assert tables.with_se(0.5271, 0.0996) == "0.53 ± 0.10"
    assert tables.with_se(float("nan"), 1.0) == "NaN"



# ---- figures as a reader sees them: styles, axes, ticks, counts ---------------------------------------------

SEARCHED = {"Random": 3, "Ours_LR": 3, "LongDiffThroughOpt_Full": 2, "BayesOpt": 2, "PBT": 2}


@pytest.fixture()
def searched(tmp_path):
    """Gradient-based runs of 4000 weight steps (40 s) and black-box searches of 30 evaluations of one
    such run each (cumulative budgets of 120k steps and 1200 s), every catalogue line style present."""
    runs_dir = tmp_path / "runs" / "uci_energy"
    for algorithm in ("Random", "Ours_LR"):
        for seed in range(3):
            fake_run(runs_dir, algorithm, seed, 5.0 + seed, diverged=(algorithm == "Random" and seed == 2),
                     steps=400)
    for seed in range(2):
        fake_run(runs_dir, "LongDiffThroughOpt_Full", seed, 3.0 + seed, steps=400)
        fake_search(runs_dir, "BayesOpt", seed, list(np.geomspace(50.0, 1.0 + seed, 30)), per_evaluation_s=40.0)
        fake_search(runs_dir, "PBT", seed, list(np.geomspace(80.0, 2.0 + seed, 30)), per_evaluation_s=40.0)
    runs = collect(runs_dir, list(SEARCHED), range(3), SEARCHED)
    return runs_dir, runs


def _data_artists(fig):
    """Every line and point collection drawn on the figure's axes (legends and grids left out)."""
    return [a for ax in fig.axes for a in (*ax.get_lines(), *ax.collections)]


@pytest.mark.parametrize("kind", figures.KINDS)
def test_every_algorithm_is_drawn_in_its_catalogue_colour_and_line_style(searched, kind):
    from matplotlib.colors import to_hex
    runs_dir, runs = searched
    fig = figures.FIGURES[kind].draw(runs, runs_dir)
    drawn = {}
    for artist in _data_artists(fig):
        algorithm = artist.get_gid()
        if algorithm == "diverged":
            continue
        assert algorithm in catalog.algorithms(), (kind, artist)
        if hasattr(artist, "get_linestyle") and not hasattr(artist, "get_offsets"):  # a line
            assert to_hex(artist.get_color()) == catalog.colour(algorithm), (kind, algorithm)
            assert artist.get_linestyle() == catalog.linestyle(algorithm), (kind, algorithm)
        else:  # points: the colour (a line style has no meaning for them)
            assert {to_hex(c, keep_alpha=False) for c in artist.get_facecolors()} == {catalog.colour(algorithm)}
        drawn.setdefault(algorithm, 0)
        drawn[algorithm] += 1
    # the loss envelope leaves out the searches, as the paper's loss figures
    shown = {a for a in SEARCHED if not (kind == "test_vs_step" and catalog.is_search(a))}
    expected = shown | ({"Random_3Batched"} if kind == "edf" else set())
    assert set(drawn) >= shown and set(drawn) <= expected
    # all three catalogue line styles appear: '-', ':' (Long Diff-through-Opt), '--' (searches)
    if kind != "error_vs_hyperparameter":
        styles = {"-", ":"} | (set() if kind == "test_vs_step" else {"--"})
        assert {a.get_linestyle() for a in fig.axes[0].get_lines() + [
            ln for ax in fig.axes[1:] for ln in ax.get_lines()]} == styles
    figures.plt.close(fig)


def _extent(ax, line) -> float:
    """The fraction of the axes' width that a line's x values span (in the axis's own scale)."""
    x = np.asarray(line.get_xdata(), dtype=float)
    x = x[np.isfinite(x) & ((x > 0) if ax.get_xscale() == "log" else True)]
    y = np.full(2, np.mean(ax.get_ylim()) if ax.get_yscale() == "linear" else np.sqrt(np.prod(ax.get_ylim())))
    ends = (ax.transData + ax.transAxes.inverted()).transform(np.column_stack([[x.min(), x.max()], y]))
    return float(ends[1, 0] - ends[0, 0])


@pytest.mark.parametrize("kind", ["test_vs_time", "test_vs_time_by_validation"])
def test_searches_over_30_runs_budget_squeeze_no_curve(searched, kind):
    """Searches whose cumulative budget is 30 single runs (and Long Diff-through-Opt, 1 here) share a log
    x axis with the one-pass runs: every curve spans at least a quarter of the width, where a linear axis
    would leave the one-pass curves a thirtieth of it."""
    runs_dir, runs = searched
    fig = figures.FIGURES[kind].draw(runs, runs_dir)
    for ax in fig.axes[:2]:
        assert ax.get_xscale() == "log"
        lines = {line.get_gid(): line for line in ax.get_lines()}
        assert set(lines) == set(SEARCHED)
        for algorithm, line in lines.items():
            assert _extent(ax, line) > 0.25, (kind, algorithm, _extent(ax, line))
    figures.plt.close(fig)
    one_pass = runs[~runs["algorithm"].map(catalog.is_search)]
    fig = figures.FIGURES[kind].draw(one_pass, runs_dir)
    # one budget: a linear axis, except the paper's HPO curves, always on log axes (paper_plots.py:888)
    assert fig.axes[0].get_xscale() == ("log" if kind == "test_vs_time" else "linear") and not fig.texts
    figures.plt.close(fig)


def _labels(fig, axis_name, which="major"):
    """(axes, visible tick labels with their window extents) of every axes' x or y axis."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        axis = getattr(ax, f"{axis_name}axis")
        lo, hi = sorted(axis.get_view_interval())
        ticks = axis.get_major_ticks() if which == "major" else axis.get_minor_ticks()
        locs = axis.get_majorticklocs() if which == "major" else axis.get_minorticklocs()
        shown = [(t.label1.get_text(), t.label1.get_window_extent(renderer))
                 for t, loc in zip(ticks, locs) if t.label1.get_visible() and t.get_visible()
                 and lo * (1 - 1e-9) <= loc <= hi * (1 + 1e-9) and t.label1.get_text()]
        out.append((ax, axis, shown))
    return out


@pytest.mark.parametrize("kind", figures.KINDS)
def test_tick_labels_are_legible(searched, kind):
    """No minor tick is labelled; every axis with labels has at least two; no two labels of an axis
    overlap (PBT's step labels ran together); log axes label in plain numbers or powers of ten."""
    runs_dir, runs = searched
    fig = figures.FIGURES[kind].draw(runs, runs_dir)
    for name in ("x", "y"):
        for ax, axis, minor in _labels(fig, name, "minor"):
            assert not minor, (kind, name, [m[0] for m in minor])
        for ax, axis, shown in _labels(fig, name):
            if not ax.has_data() or not shown:
                continue
            texts = [t for t, _ in shown]
            assert len(texts) >= 2 and len(set(texts)) == len(texts), (kind, name, texts)
            boxes = sorted((b for _, b in shown), key=lambda b: b.x0 if name == "x" else b.y0)
            for a, b in zip(boxes, boxes[1:]):
                gap = b.x0 - a.x1 if name == "x" else b.y0 - a.y1
                assert gap > 0, (kind, name, texts)
            if axis.get_scale() == "log":
                assert all(re.fullmatch(r"[0-9.]+|\$10\^\{-?[0-9]+\}\$", t) for t in texts), (kind, texts)
    figures.plt.close(fig)


@pytest.mark.parametrize("view, labels", [
    ((0.13, 120.0), ["1", "10", "100"]),          # three decades in view: decades, plain
    ((1.5, 7.0), ["2", "5"]),                      # less than a decade: 1-2-5, never "2x10^0"
    ((0.15, 2.5), ["0.2", "0.5", "1", "2"]),
    ((6e-4, 1.7e-3), ["0.001"]),                  # 2.8x: too narrow for 1-2-5, evenly spaced
    ((1e-7, 1e-2), ["$10^{-7}$", "$10^{-6}$", "$10^{-5}$", "$10^{-4}$", "$10^{-3}$", "$10^{-2}$"]),
])
def test_log_axis_ticks(view, labels):
    fig, ax = figures.plt.subplots(figsize=(4, 3))
    ax.plot(view, view)
    figures.log_axis(ax, "y")
    ax.set_ylim(*view)
    shown = [t for _, axis, s in _labels(fig, "y") for t, _ in s]
    if view == (6e-4, 1.7e-3):
        assert len(shown) >= 2 and all(re.fullmatch(r"0\.00[0-9]+", t) for t in shown), shown
    else:
        assert shown == labels
    assert not [t for _, _, s in _labels(fig, "y", "minor") for t in s]
    figures.plt.close(fig)


@pytest.mark.parametrize("kind", ["best_worst", "trajectories", "error_vs_hyperparameter"])
def test_panels_of_a_figure_share_their_scales(searched, kind):
    """best_worst had linear 0-100 panels for ASHA and PBT among log ones: one scale per quantity now."""
    runs_dir, runs = searched
    fig = figures.FIGURES[kind].draw(runs, runs_dir)
    axes = [ax for ax in fig.axes if ax.has_data()]
    if kind == "best_worst":
        assert {ax.get_yscale() for ax in axes} == {"log"}
        assert len({ax.get_ylim() for ax in axes}) == 1
    else:
        columns = len(figures.HYPERPARAMETERS)
        for j, hp in enumerate(figures.HYPERPARAMETERS):
            column = axes[j::columns]
            scale = "log" if hp in figures.LOG_HPS else "linear"
            which = "y" if kind == "trajectories" else "x"
            assert {getattr(ax, f"get_{which}scale")() for ax in column} == {scale}, (kind, hp)
            assert len({getattr(ax, f"get_{which}lim")() for ax in column}) == 1
    figures.plt.close(fig)


def test_titles_state_the_true_counts(study, searched, tmp_path):
    runs_dir, runs = study
    label = catalog.label
    fig = figures.trajectories(runs, runs_dir)
    # counted runs with a history (a diverged one too), at most SAMPLE_RUNS of each algorithm
    assert fig._suptitle.get_text() == (f"UCI Energy: hyperparameter trajectories of 3 runs per algorithm "
                                        f"(2 of {label('Random_SteppedLR')}; 6 of {label('Random_Validation')})")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Random (3 runs)", f"{label('Random_SteppedLR')} (2 runs)", "Random (validation) (6 runs)",
                      "Ours (WD+LR) (3 runs)"]
    figures.plt.close(fig)
    fig = figures.error_vs_hyperparameter(runs, runs_dir)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "Random (3 runs)", f"{label('Random_SteppedLR')} (2 runs)", "Random (validation) (6 runs)",
        "Ours (WD+LR) (3 runs)"]
    figures.plt.close(fig)
    fig = figures.best_worst(runs, runs_dir)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()][:2] == [
        "Random (2 finished)", f"{label('Random_SteppedLR')} (2 finished)"]
    figures.plt.close(fig)
    many = tmp_path / "many"
    for seed in range(10):
        fake_run(many, "Ours_LR", seed, 1.0 + seed)
    fig = figures.trajectories(collect(many, ["Ours_LR"], range(10)), many)
    assert fig._suptitle.get_text().endswith(f"of {figures.SAMPLE_RUNS} runs per algorithm")
    figures.plt.close(fig)
    fig = figures.trajectories(searched[1], searched[0])
    assert fig._suptitle.get_text().endswith(
        f"of 2 runs per algorithm (3 of Random, {label('Ours_LR')})")
    figures.plt.close(fig)


def test_png_palette_keeps_the_catalogue_colours(searched, tmp_path):
    """Quantised to a palette, the PNG still holds every algorithm's colour: within 8/255 per channel (an
    octree palette approximates flat colours by a few levels, far below what an eye tells apart; catalogue
    colours differ by tens of levels, so a colour lost to a neighbour would fail)."""
    from matplotlib.colors import to_rgb
    from PIL import Image
    runs_dir, runs = searched
    png = tmp_path / "edf.png"
    figures.make("edf", runs, runs_dir, [png])
    with Image.open(png) as image:
        assert image.mode == "P" and image.size == (990, 495)
        colours = np.array([c for _, c in image.convert("RGB").getcolors(1 << 16)], dtype=float)
    for algorithm in SEARCHED:
        target = np.array(to_rgb(catalog.colour(algorithm))) * 255
        assert np.abs(colours - target).max(axis=1).min() <= 8, algorithm

# ---- the analysis page at the full study's size ------------------------------------------------------------

# UCI Energy in the full study (config/config.yaml): 11 gradient-based algorithms x 200 seeds and
# 5 black-box searches x 32 repetitions whose cumulative budgets reach 30 single runs.
FULL_GRADIENT = ["Random", "Random_SteppedLR", "Random_Validation", "Lorraine", "Baydin", "Ours_LR",
                 "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt", "LongDiffThroughOpt_Standalone",
                 "LongDiffThroughOpt_Full"]
FULL_SEARCHES = ["BayesOpt", "ASHA", "ASHA_Ours", "PBT", "PBT_Ours"]
FULL_SEEDS, FULL_REPETITIONS = 200, 32
# logged rows per history (4000 weight steps logged every 100; Long Diff-through-Opt (Full): 30 x 4000 weight
# steps; the searches: one row per evaluation or report)
FULL_ROWS = {"LongDiffThroughOpt_Full": 1201, "LongDiffThroughOpt_Standalone": 61, "BayesOpt": 30,
             "ASHA": 800, "ASHA_Ours": 800, "PBT": 2000, "PBT_Ours": 2000}


def noisy_history(rng, rows, first, final, lr0, wd0, m0, end_step, search=False) -> pd.DataFrame:
    """A history as noisy as a real one or noisier (noise makes PNGs larger, so sizes measured on it are
    upper bounds): the test metric falls from ``first`` to ``final`` along a random walk (best so far for
    a search), the hyperparameters wander."""
    t = np.linspace(0.0, 1.0, rows)
    walk = np.cumsum(rng.normal(0.0, 0.08, rows))
    log_metric = np.log(first) + (np.log(final) - np.log(first)) * np.sqrt(t) + walk - walk[-1] * t
    metric = np.exp(log_metric)
    if search:
        metric = np.minimum.accumulate(metric)
    step = np.round(np.linspace(0 if not search else end_step / rows, end_step, rows))
    return pd.DataFrame({
        "step": step.astype(int), "hyper_step": (step // 10).astype(int),
        "time_s": step * 3e-4 * rng.uniform(0.8, 1.2), "train_loss": metric / 110, "valid_loss": metric / 90,
        "test_loss": metric / 100, "test_metric": metric,
        "lr": lr0 * np.exp(np.cumsum(rng.normal(0, 0.05, rows))),
        "weight_decay": wd0 * np.exp(np.cumsum(rng.normal(0, 0.1, rows))),
        "momentum": np.clip(m0 + np.cumsum(rng.normal(0, 0.01, rows)), 0, 1)})


def full_size_study(root: Path):
    """UCI Energy at the full study's size: (runs directory, collected runs, plan)."""
    rng = np.random.default_rng(2022)
    runs_dir = root / "runs" / "uci_energy"
    inits = [{"seed": s, "lr": float(10 ** rng.uniform(-6, -1)), "weight_decay": float(10 ** rng.uniform(-7, -2)),
              "momentum": float(rng.uniform()), "lr_step_factor": float(rng.uniform(0.95, 1.01))}
             for s in range(FULL_SEEDS)]
    algorithms = FULL_GRADIENT + FULL_SEARCHES
    plan = fake_plan(algorithms, range(FULL_SEEDS), {a: FULL_REPETITIONS for a in FULL_SEARCHES})
    plan["initialisations"] = inits
    for algorithm in algorithms:
        search = catalog.is_search(algorithm)
        quality = rng.uniform(0.3, 3.0)
        for seed in plan["algorithms"][algorithm]["seeds"]:
            init = inits[seed]
            lr0, wd0, m0 = init["lr"], init["weight_decay"], init["momentum"]
            diverged = not search and rng.uniform() < 0.02
            final = float(quality * 10 ** rng.uniform(-0.8, 1.8))
            rows = FULL_ROWS.get(algorithm, 41)
            end = 30 * 4000 * rng.uniform(0.5, 1.0) if search else 100 * (rows - 1)
            history = noisy_history(rng, rows, 100.0, final, lr0, wd0, m0, end, search)
            if diverged:
                history = history.iloc[: rows // 2].copy()
                history.loc[history.index[-1], "test_metric"] = float("nan")
            out = runs_dir / algorithm / f"seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            history.to_csv(out / "history.csv", index=False)
            nan = float("nan")
            last = history.iloc[-1]
            metrics = {
                "dataset": "uci_energy", "algorithm": algorithm, "seed": seed,
                "init_lr": lr0, "init_weight_decay": wd0, "init_momentum": m0,
                "final_lr": float(last["lr"]), "final_weight_decay": float(last["weight_decay"]),
                "final_momentum": float(last["momentum"]),
                "valid_loss": nan if diverged else final / 90, "test_loss": nan if diverged else final / 100,
                "test_metric": nan if diverged else final, "weight_steps": int(last["step"]),
                "wall_time_s": float(last["time_s"]), "diverged": diverged,
                "settings": {**SETTINGS, **({"lr_step_factor": init["lr_step_factor"]}
                                            if algorithm == "Random_SteppedLR" else {})}}
            (out / "metrics.json").write_text(json.dumps(metrics))
    return runs_dir, collection.collect(plan, runs_dir), plan


# Chromium refuses to open a data URL longer than 2 MiB (2,097,152 characters: url::kMaxURLChars), and the
# Snakemake report opens each analysis page as a base64 data URL (4/3 of the page's bytes). A page whose data
# URL stays under 1.5 MiB (a page of about 1.1 MiB) leaves a quarter of the limit for what this synthetic study
# may not foresee (more algorithms on a dataset, longer labels, real curves that compress less well).
DATA_URL_BUDGET = int(1.5 * 2 ** 20)


def test_analysis_page_of_the_full_study_fits_in_the_reports_data_url(tmp_path):
    """UCI Energy at the full study's size (2,360 runs, 16 algorithms, noisy histories): every figure is
    embedded and the page's data URL stays under DATA_URL_BUDGET (it was 5.6 MiB before palette PNGs)."""
    import base64
    runs_dir, runs, plan = full_size_study(tmp_path)
    assert collection.status_counts(runs)["total"] == 11 * 200 + 5 * 32
    runs_path, summary_path, plan_path = tmp_path / "runs.tsv", tmp_path / "summary.tsv", tmp_path / "plan.json"
    collection.write_runs(runs, runs_path)
    tables.summarise(runs).to_csv(summary_path, sep="\t", index=False)
    plan_path.write_text(json.dumps(plan))
    sweep_path = tmp_path / "sweep.tsv"
    pd.DataFrame([{"key": "lr", "type": "log_uniform", "range": "[1e-06, 0.1]"}]).to_csv(
        sweep_path, sep="\t", index=False)
    pngs = [tmp_path / "figures" / f"{kind}.png" for kind in figures.KINDS]
    for kind, png in zip(figures.KINDS, pngs):
        figures.make(kind, runs, runs_dir, [png])
    out = tmp_path / "uci_energy.html"
    report_page.write(runs_path, summary_path, sweep_path, plan_path, pngs, out)
    page = out.read_bytes()
    assert page.count(b"data:image/png;base64,") == len(figures.KINDS)
    url = f"data:text/html;charset=utf8;filename={out.name};base64,".encode() + base64.b64encode(page)
    sizes = {png.stem: png.stat().st_size for png in pngs}
    assert len(url) < DATA_URL_BUDGET, (len(page), sizes)


def test_paper_tables_scale_kin8nm_and_add_test_error_tables(study, tmp_path):
    """Kin8nm's MSE is shown x 1000 as in the paper's Table 1 (the TSV keeps the raw values); a classification
    dataset also gets its test error (1 - accuracy) in Table 3."""
    _, runs = study
    kin = tables.summarise(runs.assign(dataset="uci_kin8nm"), statistic="sample")
    fm_runs = runs.assign(dataset="fashion_mnist", test_accuracy=0.875)
    ours = fm_runs["algorithm"] == "Ours_LR"
    fm_runs.loc[ours, "test_accuracy"] = 0.9 - 0.01 * fm_runs.loc[ours, "seed"].astype(float)
    fm = tables.summarise(fm_runs, statistic="sample")
    errors = fm[fm["metric"] == tables.ERROR_METRIC].set_index("algorithm")
    assert errors.loc["Random", "mean"] == pytest.approx(0.125)
    done = fm_runs[(fm_runs["algorithm"] == "Ours_LR") & (fm_runs["status"] == "done")]
    assert errors.loc["Ours_LR", "mean"] == pytest.approx(float((1 - done["test_accuracy"]).mean()))
    paths = []
    for name, frame in (("kin", kin), ("fm", fm)):
        paths.append(tmp_path / f"{name}.tsv")
        frame.to_csv(paths[-1], sep="\t", index=False)
    md, tsv = tmp_path / "paper.md", tmp_path / "paper.tsv"
    tables.write_paper_tables(paths, md, tsv)
    text = md.read_text()
    assert "### UCI Kin8nm (test MSE (unnormalised) × 1000)" in text
    assert "| Random | 15000 ± 5000 |" in text          # 15.0 ± 5.0 shown x 1000
    assert text.index("## Table 2") < text.index("## Table 3") < text.index(f"### Fashion-MNIST ({tables.ERROR_METRIC})")
    raw = pd.read_csv(tsv, sep="\t")
    assert raw[(raw["dataset"] == "uci_kin8nm") & (raw["algorithm"] == "Random")]["mean"].iloc[0] == 15.0
    html_page = tables.summary_html(fm)
    assert html_page.count("<table>") == 2 and tables.ERROR_METRIC in html_page


def test_paper_tables_place_long_diff_through_opt_and_the_searches_as_the_paper():
    """The paper's tables (paper_plots.py:466-542): Long Diff-through-Opt (Full), run on uci_energy_long, has a
    table of its own with UCI Energy's rows (502-504); Medium one with Fashion-MNIST's rows, cross-entropy and
    error (491-495); Fashion-MNIST and its BatchNorm variant share one (481-483); the short-horizon study
    (Standalone) is a table of its own (497-507), without the validation proportions and the proof of concept
    (tables of their own, 521-525 and a figure); BayesOpt has two tables, UCI and Fashion-MNIST, ASHA and PBT
    one each, all without bold."""
    def rows(dataset, algorithms, metric="m"):
        return [{"dataset": dataset, "algorithm": a, "label": catalog.label(a.split("@")[0]), "metric": metric,
                 "runs": 3, "done": 3, "diverged": 0, "stale": 0, "missing": 0, "mean": 1.0 + i, "mean_se": 0.1,
                 "median": 1.0 + i, "median_se": 0.1, "best": 0.5 + i, "statistic": "bootstrap"}
                for i, a in enumerate(algorithms)]

    summaries = pd.DataFrame(
        rows("uci_energy", ["Random", "Random_3Batched", "Ours_LR", "BayesOpt", "BayesOpt@paper", "ASHA",
                            "ASHA@paper", "PBT", "PBT@paper"], "test MSE (unnormalised)")
        + rows("uci_energy_long", ["Random", "LongDiffThroughOpt_Standalone", "LongDiffThroughOpt_Full"],
               "test MSE (unnormalised)")
        # variants with a table or figure of their own (paper_table: own) are in none of these
        + rows("uci_energy_valid25", ["Ours_LR_Momentum"], "test MSE (unnormalised)")
        + rows("uci_energy_concept", ["Random"], "test MSE (unnormalised)")
        + rows("fashion_mnist", ["Random", "Ours_LR", "LongDiffThroughOpt_Medium", "BayesOpt"],
               "test cross-entropy")
        + rows("fashion_mnist", ["Random", "Ours_LR", "LongDiffThroughOpt_Medium"], tables.ERROR_METRIC)
        + rows("fashion_mnist_bn", ["Random", "Ours_LR"], "test cross-entropy")
        + rows("fashion_mnist_bn", ["Random", "Ours_LR"], tables.ERROR_METRIC),
        columns=tables.COLUMNS)
    laid = tables._layout(summaries)
    layout = {title.split(": ", 1)[1]: {h: list(part["algorithm"]) for h, part in sections}
              for title, sections, _ in laid}
    bold = [b for _, _, b in laid]
    energy, long = "UCI Energy (test MSE (unnormalised))", catalog.dataset_label("uci_energy_long")
    fm, fm_error = "Fashion-MNIST (test cross-entropy)", f"Fashion-MNIST ({tables.ERROR_METRIC})"
    bn = "Fashion-MNIST with BatchNorm (test cross-entropy)"
    assert layout == {
        "UCI regression (unnormalised test MSE)": {energy: ["Random", "Random_3Batched", "Ours_LR"]},
        "Fashion-MNIST": {fm: ["Random", "Ours_LR"]},
        f"Fashion-MNIST, {tables.ERROR_METRIC}": {fm_error: ["Random", "Ours_LR"]},
        "Fashion-MNIST with Long Diff-through-Opt (Medium)": {
            fm: ["Random", "Ours_LR", "LongDiffThroughOpt_Medium"],
            fm_error: ["Random", "Ours_LR", "LongDiffThroughOpt_Medium"]},
        "UCI Energy with Long Diff-through-Opt (Full)": {
            energy: ["Random", "Random_3Batched", "Ours_LR", "LongDiffThroughOpt_Full"]},
        "Fashion-MNIST and Fashion-MNIST with BatchNorm": {fm: ["Random", "Ours_LR"], bn: ["Random", "Ours_LR"]},
        long: {f"{long} (test MSE (unnormalised))": ["Random", "LongDiffThroughOpt_Standalone"]},
        "Bayesian Optimisation, UCI Energy": {energy: ["BayesOpt", "BayesOpt@paper"]},
        "Bayesian Optimisation, Fashion-MNIST": {fm: ["BayesOpt"]},
        "ASHA, UCI Energy": {energy: ["ASHA", "ASHA@paper"]},
        "PBT, UCI Energy": {energy: ["PBT", "PBT@paper"]}}
    assert list(layout)[3:5] == ["Fashion-MNIST with Long Diff-through-Opt (Medium)",
                                 "UCI Energy with Long Diff-through-Opt (Full)"]
    assert bold == [True] * 7 + [False] * 4
    text = tables.paper_markdown(summaries)
    assert "## Table 5: UCI Energy with Long Diff-through-Opt (Full)" in text
    assert "**" in text.split("## Table 8")[0] and "**" not in text.split("## Table 8")[1]


def test_best_column_is_the_lowest_test_metric_of_a_finished_runs_whole_trajectory(study):
    """Best is nanmin over every finished run's test trajectory (paper_plots.py:448 over figures.py:508-520),
    not the minimum of final values; a diverged run's trajectory does not count (the paper deleted runs whose
    final value was NaN), and the mean and median stay over the final values."""
    runs_dir, _ = study
    history = runs_dir / "Ours_LR" / "seed1" / "history.csv"
    h = pd.read_csv(history)
    h.loc[2, "test_metric"] = 1.5          # a dip mid-way: final 5.0, trajectory minimum 1.5
    h.to_csv(history, index=False)
    history = runs_dir / "Random" / "seed2" / "history.csv"   # the diverged run: 0.1 before its NaN
    h = pd.read_csv(history)
    h.loc[1, "test_metric"] = 0.1
    h.to_csv(history, index=False)
    runs = collect(runs_dir, ["Random", "Random_SteppedLR", "Random_Validation", "Ours_LR"], range(6))
    r = runs.set_index(["algorithm", "seed"])
    assert r.loc[("Ours_LR", 1), "best_test_metric"] == 1.5 and r.loc[("Ours_LR", 1), "test_metric"] == 5.0
    s = tables.summarise(runs, statistic="sample").set_index("algorithm")
    assert s.loc["Ours_LR", "best"] == 1.5
    assert s.loc["Ours_LR", "mean"] == pytest.approx((2.5 + 5.0 + 7.5) / 3)
    assert s.loc["Random", "best"] == 10.0     # the diverged run's 0.1 left out: the finished runs' 10 and 20


def _classification_runs():
    """Fashion-MNIST runs of Random, by hand: finished (error 0.2), finished but over the post-hoc threshold
    (test cross-entropy 2000, error 0.1), diverged (no accuracy) and missing."""
    nan = float("nan")
    return pd.DataFrame({
        "dataset": "fashion_mnist", "algorithm": "Random", "seed": [0, 1, 2, 3],
        "status": ["done", "done", "diverged", "missing"], "valid_loss": [0.5, 2000.0, nan, nan],
        "test_metric": [0.5, 2000.0, nan, nan], "best_test_metric": [0.4, 0.3, nan, nan],
        "over_threshold": [False, True, False, False], "test_accuracy": [0.8, 0.9, nan, nan]})


def test_error_table_keeps_diverged_runs_and_the_loss_table_drops_runs_over_the_threshold():
    """The loss row leaves out the run over Fashion-MNIST's post-hoc threshold (paper_plots.py:54-76) but its
    Best keeps that run's trajectory; the error row keeps it and the diverged run, at chance error 1 - 1/10
    (paper_plots.py:341-364)."""
    s = tables.summarise(_classification_runs(), statistic="sample").set_index("metric")
    loss, error = s.loc["test cross-entropy"], s.loc[tables.ERROR_METRIC]
    assert (loss["mean"], loss["median"], loss["best"]) == (0.5, 0.5, 0.3)
    errors = [0.2, 0.1, 0.9]
    assert error["mean"] == pytest.approx(np.mean(errors))
    assert error["mean_se"] == pytest.approx(np.std(errors, ddof=1) / np.sqrt(3))
    assert error["median"] == pytest.approx(0.2) and error["best"] == pytest.approx(0.1)
    assert (error["runs"], error["diverged"], error["missing"]) == (4, 1, 1)


def test_paper_format_on_hand_made_numbers():
    """paper_plots.py:610-640: each SE to one significant figure, the value to that decimal place (a whole
    number once the SE is 1 or more), bold when the rounded value is at most the column's lowest value plus its
    SE; Best as '{:#.3g}' without a bare decimal point."""
    assert tables.paper_rounding(0.123456, 0.0234)[1:] == ("0.12", "0.02")
    assert tables.paper_rounding(7.434, 8.1)[1:] == ("7", "8")
    assert tables.paper_rounding(1234.5, 123)[1:] == ("1200", "100")
    assert tables.paper_rounding(0.5271, 0.0996)[1:] == ("0.5", "0.1")
    assert tables.paper_rounding(float("nan"), 0.1) is None
    assert [tables.best_text(v) for v in (2.5, 100.0, 1234.5, 0.012345)] == ["2.50", "100", "1.23e+03", "0.0123"]
    summary = pd.DataFrame({"label": ["A", "B", "C", "D"], "mean": [1.0, 1.04, 1.054, 1.2],
                            "mean_se": [0.05, 0.01, 0.01, 0.01], "median": [3.0, 2.0, 2.0, 2.0],
                            "median_se": [0.3, 0.3, 0.3, 0.3], "best": [0.9, 0.95, 0.9, 1.1],
                            "runs": 3, "diverged": 0})
    cells = tables._cells(summary)
    # threshold 1.0 + 0.05: A, B and C (1.054 rounds to 1.05) bold, D not
    assert cells["Mean ± SE"].tolist() == ["**1.00** ± 0.05", "**1.04** ± 0.01", "**1.05** ± 0.01", "1.20 ± 0.01"]
    assert cells["Median ± SE"].tolist() == ["3.0 ± 0.3", "**2.0** ± 0.3", "**2.0** ± 0.3", "**2.0** ± 0.3"]
    assert cells["Best"].tolist() == ["**0.900**", "0.950", "**0.900**", "1.10"]
    assert "**" not in "".join(tables._cells(summary, bold=None)[["Mean ± SE", "Best"]].sum())


@pytest.mark.parametrize("check,over", [("post_hoc", True), ("training", False)])
def test_a_run_over_a_post_hoc_threshold_is_flagged_not_diverged(study, check, over):
    """divergence_check: post_hoc flags a run whose final test metric reaches divergence_threshold (the paper's
    Fashion-MNIST rule); it stays done, so only the loss statistics leave it out. Under training (a run frozen
    during training) nothing is flagged after the fact."""
    runs_dir, _ = study
    path = runs_dir / "Ours_LR" / "seed2" / "metrics.json"      # final test metric 7.5
    metrics = json.loads(path.read_text())
    metrics["settings"].update(divergence_threshold=7.0, divergence_check=check)
    path.write_text(json.dumps(metrics))
    runs = collect(runs_dir, ["Ours_LR"], range(3))
    r = runs.set_index("seed")
    assert r.loc[2, "status"] == "done" and bool(r.loc[2, "over_threshold"]) is over
    assert not r.loc[[0, 1], "over_threshold"].astype(bool).any()
    s = tables.summarise(runs, statistic="sample").set_index("algorithm")
    assert s.loc["Ours_LR", "mean"] == pytest.approx(np.mean([2.5, 5.0] if over else [2.5, 5.0, 7.5]))


def test_envelope_is_the_bootstrap_median_and_its_spread():
    """Two runs at 1 and 3: a resample's median is 1, 2 or 3 with probabilities 1/4, 1/2, 1/4, so the mean of
    the medians is 2 and their standard deviation sqrt(1/2); one run: itself, no spread."""
    middle, spread = curves.envelope(np.array([[1.0, 3.0], [1.0, 3.0]]), n_boot=4000)
    np.testing.assert_allclose(middle, 2.0, atol=0.05)
    np.testing.assert_allclose(spread, np.sqrt(0.5), atol=0.03)
    middle, spread = curves.envelope(np.array([[4.0], [2.0]]))
    np.testing.assert_array_equal(middle, [4.0, 2.0])
    np.testing.assert_array_equal(spread, [0.0, 0.0])


def test_loss_envelope_figure_draws_the_papers_envelope(study):
    """test_vs_step: one line and one band per algorithm, log y; Ours (WD+LR)'s last point is the bootstrap mean
    of the median of its three finals (27 equally likely resamples, counted here); Random (3-batched) replaces
    Random (validation); a run over a post-hoc threshold is left out."""
    import itertools

    runs_dir, runs = study
    runs = runs.copy()
    runs["over_threshold"] = (runs["algorithm"] == "Random_SteppedLR") & (runs["seed"] == 1)
    fig = figures.test_vs_step(runs, runs_dir)
    ax = fig.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    assert set(lines) == {"Random", "Random_SteppedLR", "Random_3Batched", "Ours_LR"}
    assert {c.get_gid() for c in ax.collections} == set(lines)   # the ± std bands
    assert ax.get_yscale() == "log"
    exact = np.mean([np.median(c) for c in itertools.product([2.5, 5.0, 7.5], repeat=3)])
    assert lines["Ours_LR"].get_ydata()[-1] == pytest.approx(exact, rel=0.03)
    assert "n=1" in lines["Random_SteppedLR"].get_label()   # seed 1 over the threshold
    assert lines["Random_SteppedLR"].get_ydata()[-1] == pytest.approx(15.0)
    figures.plt.close(fig)


def test_running_minimum_figure(tmp_path):
    """test_vs_time: each run's running minimum of the test metric against time (the paper's HPO curves,
    paper_plots.py:869-887); a search's over every evaluation's lowest test metric (evaluations.csv), against
    cumulative search time; log axes."""
    runs_dir = tmp_path / "runs" / "uci_energy"
    out = fake_run(runs_dir, "Ours_LR", 0, 1.0, steps=3)
    h = pd.read_csv(out / "history.csv")
    h["time_s"], h["test_metric"] = [0.0, 1.0, 2.0, 3.0], [5.0, 2.0, 4.0, 1.0]
    h.to_csv(out / "history.csv", index=False)
    out = fake_search(runs_dir, "BayesOpt", 0, [3.0, 3.0, 2.0])
    pd.DataFrame({"cumulative_time_s": [10.0, 20.0, 30.0], "test_metric": [3.0, 9.0, 2.0],
                  "min_test_metric": [3.0, 1.0, 2.0]}).to_csv(out / "evaluations.csv", index=False)
    fake_run(runs_dir, "Random_Validation", 0, 2.0)
    runs = collect(runs_dir, ["Ours_LR", "BayesOpt", "Random_Validation"], range(1))
    fig = figures.test_vs_time(runs, runs_dir)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"Ours_LR", "BayesOpt"}   # Random (validation) left out, as the paper's
    ours, bayes = lines["Ours_LR"], lines["BayesOpt"]
    assert dict(zip(ours.get_xdata()[ours.get_xdata() > 0], ours.get_ydata()[ours.get_xdata() > 0])) == {
        1.0: 2.0, 2.0: 2.0, 3.0: 1.0}
    assert list(bayes.get_ydata()) == [3.0, 1.0, 1.0] and list(bayes.get_xdata()) == [10.0, 20.0, 30.0]
    assert fig.axes[0].get_xscale() == "log"   # 30 s of search against 3 s of training
    figures.plt.close(fig)


def test_a_datasets_paper_table_is_checked(tmp_path):
    """A dataset's paper_table is with_base, own or absent; anything else stops with the file and the key named."""
    for value, where in (("with_base", "good"), ("beside", "bad")):
        datasets = tmp_path / where / "datasets"
        datasets.mkdir(parents=True)
        (datasets / "a.yaml").write_text("label: A\nfamily: uci\ntask: regression\nmetric: test MSE\n")
        (datasets / "b.yaml").write_text(f"label: B\nsame_as: a\npaper_table: {value}\n")
    known = catalog.datasets(tmp_path / "good")
    assert known["b"].paper_table == "with_base" and known["a"].paper_table is None
    with pytest.raises(catalog.CatalogError,
                       match=r"b\.yaml: key 'paper_table' must be one of with_base, own, got 'beside'"):
        catalog.datasets(tmp_path / "bad")
