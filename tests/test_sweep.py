"""onepass.sweep: samplers, determinism, the initialisation table and its CLI."""

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from onepass import sweep

ROOT = Path(__file__).resolve().parents[1]
PAPER = {
    "seed": 7,
    "samplers": {
        "lr": {"type": "log_uniform", "range": [1e-6, 1e-1]},
        "weight_decay": {"type": "log_uniform", "range": [1e-7, 1e-2]},
        "momentum": {"type": "uniform", "range": [0.0, 1.0]},
        "lr_step_factor": {"type": "uniform", "range": [0.95, 1.01],
                           "algorithms": ["Random_SteppedLR"]},
    },
}


def test_draw_is_deterministic_and_depends_on_dataset_and_seed():
    a = sweep.draw(PAPER, "uci_energy", 3)
    assert a == sweep.draw(PAPER, "uci_energy", 3)
    assert a != sweep.draw(PAPER, "uci_energy", 4)
    assert a != sweep.draw(PAPER, "uci_yacht", 3)
    assert a != sweep.draw({**PAPER, "seed": 8}, "uci_energy", 3)


def test_growing_the_sweep_or_adding_a_key_keeps_earlier_draws():
    small, large = sweep.table(PAPER, "fashion_mnist", 5), sweep.table(PAPER, "fashion_mnist", 20)
    pd.testing.assert_frame_equal(small, large.head(5))
    more = {**PAPER, "samplers": {**PAPER["samplers"], "hidden_units": {"type": "choice", "values": [50, 100]}}}
    assert sweep.draw(more, "fashion_mnist", 2)["lr"] == sweep.draw(PAPER, "fashion_mnist", 2)["lr"]


@pytest.mark.parametrize("kind,rng", [("uniform", [0.95, 1.01]), ("log_uniform", [1e-6, 1e-1]),
                                      ("normal", [-1.0, 3.0]), ("log_normal", [1e-4, 1e2])])
def test_continuous_samplers_stay_in_range(kind, rng):
    spec = {"seed": 1, "samplers": {"x": {"type": kind, "range": rng}}}
    values = sweep.table(spec, "d", 400)["x"]
    assert values.between(*rng).all()
    assert values.nunique() == 400


def test_log_uniform_is_uniform_in_log_space_and_normal_is_centred():
    lr = sweep.table(PAPER, "d", 2000)["lr"].map(math.log10)
    assert abs(lr.mean() - (-3.5)) < 0.1
    assert lr.min() < -5.8 and lr.max() > -1.2
    spec = {"seed": 1, "samplers": {"x": {"type": "normal", "range": [0.0, 6.0]}}}
    x = sweep.table(spec, "d", 2000)["x"]
    assert abs(x.mean() - 3.0) < 0.1 and abs(x.std() - 1.0) < 0.1


def test_quantize_and_choice():
    spec = {"seed": 1, "samplers": {
        "q": {"type": "uniform", "range": [0, 1], "quantize": 0.25},
        "ql": {"type": "log_uniform", "range": [1e-5, 1e-1], "quantize": 1e-5},
        "model.width": {"type": "choice", "values": [32, 64, 128]},
    }}
    t = sweep.table(spec, "d", 200)
    assert set(t["q"]) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(abs(v / 1e-5 - round(v / 1e-5)) < 1e-6 for v in t["ql"])
    assert set(t["model.width"]) == {32, 64, 128}


@pytest.mark.parametrize("spec,needle", [
    ({"type": "gaussian", "range": [0, 1]}, "sweep.samplers.lr.type"),
    ({"type": "uniform"}, "sweep.samplers.lr.range"),
    ({"type": "uniform", "range": [1, 0]}, "sweep.samplers.lr.range"),
    ({"type": "log_uniform", "range": [0, 1]}, "sweep.samplers.lr.range"),
    ({"type": "choice"}, "sweep.samplers.lr.values"),
])
def test_bad_sampler_is_rejected_naming_the_key(spec, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        sweep.check_sampler("lr", spec)


def test_applies_to():
    samplers = PAPER["samplers"]
    assert sweep.applies_to(samplers["lr"], "Ours_LR")
    assert sweep.applies_to(samplers["lr_step_factor"], "Random_SteppedLR")
    assert not sweep.applies_to(samplers["lr_step_factor"], "Random")


def test_cli_writes_table_and_summary(tmp_path):
    table, summary = tmp_path / "init.tsv", tmp_path / "summary.tsv"
    sweep.main(["--spec", json.dumps(PAPER), "--dataset", "uci_energy", "--initialisations", "6",
                "--table", str(table), "--summary", str(summary)])
    t = pd.read_csv(table, sep="\t")
    assert list(t["seed"]) == list(range(6))
    for _, row in t.iterrows():  # exact round trip of every drawn float
        drawn = sweep.draw(PAPER, "uci_energy", int(row["seed"]))
        assert all(row[k] == drawn[k] for k in drawn)
    s = pd.read_csv(summary, sep="\t").set_index("key")
    assert set(s.index) == set(PAPER["samplers"])
    assert s.loc["lr", "type"] == "log_uniform" and s.loc["lr", "n"] == 6
    assert s.loc["lr_step_factor", "algorithms"] == "Random_SteppedLR"


def test_full_config_uses_the_papers_samplers_and_counts():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    samplers = config["sweep"]["samplers"]
    files = {"penn_treebank": {"type": "from_files"}, "cifar10": {"type": "from_files"}}
    # and the proof of concept's own boxes (run_all.py 167-198; tests/test_paper_studies.py)
    fixed = {"type": "choice", "values": [1 / (1 + math.exp(-0.5))]}
    assert samplers["lr"] == {"type": "log_uniform", "range": [1e-6, 1e-1],
                              "by_dataset": {**files, "uci_energy_concept": {"range": [1e-6, 10.0]}}}
    assert samplers["weight_decay"] == {"type": "log_uniform", "range": [1e-7, 1e-2],
                                        "by_dataset": {**files, "uci_energy_concept": {"range": [1e-7, 100.0]}}}
    assert samplers["momentum"] == {"type": "uniform", "range": [0.0, 1.0],
                                    "by_dataset": {**files, "uci_energy_concept": fixed,
                                                   "uci_energy_concept_ours": fixed}}
    assert samplers["lr_step_factor"]["range"] == [0.95, 1.01]
    assert {d: v["type"] for d, v in samplers["lr_step_factor"]["by_dataset"].items()} == {
        "penn_treebank": "from_files", "cifar10": "from_files"}
    n = config["sweep"]["initialisations"]
    assert all(n[d] == 200 for d in config["datasets"] if d.startswith("uci_") and not d.endswith("_long")
               and "concept" not in d)
    assert (n["fashion_mnist"], n["penn_treebank"], n["cifar10"]) == (100, 50, 50)
    # the appendix: BatchNorm on Fashion-MNIST's 100, the paper's 60 repetitions of the short horizons
    assert n["fashion_mnist_bn"] == 100
    assert all(n[d] == 60 for d in ("uci_energy_long", "uci_kin8nm_long", "uci_power_long", "fashion_mnist_long"))


def test_a_dataset_variant_uses_its_bases_data_and_initialisations():
    from onepass import catalog, data, study
    from onepass.settings import load_settings

    bn, base = catalog.dataset("fashion_mnist_bn"), catalog.dataset("fashion_mnist")
    assert bn.is_variant and bn.base == "fashion_mnist" and not base.is_variant and base.base == "fashion_mnist"
    assert (bn.family, bn.task, bn.metric, bn.data, bn.shape) == (base.family, base.task, base.metric, base.data,
                                                                  base.shape)
    # its settings are laid over the base's
    assert bn.settings == {**base.settings, "model": "mlp_bn"} and base.settings["model"] == "mlp"
    assert "fashion_mnist_bn" not in data.datasets() and "fashion_mnist" in data.datasets()
    config = study.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                            yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    assert study.initialisations(config, "fashion_mnist_bn") == study.initialisations(config, "fashion_mnist")
    assert study.initialisations(config, "uci_energy_long") == study.initialisations(config, "uci_energy")[:60]
    assert study.member_of(config, "uci_energy_long", "Random", 7) == study.member_of(config, "uci_energy",
                                                                                       "Random", 7)
    assert load_settings("uci_energy", "Ours_LR_Momentum")["hyperparameter_steps"] == 400


def _steps(config, dataset, algorithm):
    from onepass import study

    s = study.settings(config, dataset, algorithm)
    return s["hyperparameter_steps"], s["update_interval"]


def test_the_short_horizon_studies_keep_long_diff_through_opts_own_steps():
    """The paper's run_all.py passed --hyperparameter_steps 20 (UCI) / 100 (Fashion-MNIST) on the command line,
    and each algorithm's YAML was read after it (parallel_exec.run_parallel), so Long Diff-through-Opt's own
    hyperparameter_steps won: Standalone 30 windows of 200 weight steps on UCI, 50 of 1000 on Fashion-MNIST."""
    from snakemake.utils import update_config

    from onepass import study

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    full = study.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), schema)
    for dataset in ("uci_energy_long", "uci_kin8nm_long", "uci_power_long"):
        for short in ("Random", "Ours_LR_Momentum", "DiffThroughOpt"):
            assert _steps(full, dataset, short) == (20, 10), (dataset, short)
        assert _steps(full, dataset, "LongDiffThroughOpt_Standalone") == (30, 200)
    assert _steps(full, "uci_energy_long", "LongDiffThroughOpt_Full") == (30, 4000)
    for short in ("Random", "Ours_LR_Momentum", "DiffThroughOpt"):
        assert _steps(full, "fashion_mnist_long", short) == (100, 10)
    assert _steps(full, "fashion_mnist_long", "LongDiffThroughOpt_Standalone") == (50, 1000)
    assert study.settings(full, "fashion_mnist_long", "LongDiffThroughOpt_Standalone")["unroll_steps"] == 1000
    # the quick study layers its overrides over the full one's (as Snakemake merges config files)
    quick = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(quick, yaml.safe_load((ROOT / "config" / "quick.yaml").read_text()))
    quick = study.validate(quick, schema)
    assert _steps(quick, "uci_energy_long", "Random") == (20, 10)
    assert _steps(quick, "uci_energy_long", "LongDiffThroughOpt_Standalone") == (30, 200)


def test_a_variant_of_a_variant_is_refused(tmp_path):
    from onepass import catalog

    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "a.yaml").write_text("label: A\nfamily: uci\ntask: regression\nmetric: test MSE\n")
    (datasets / "b.yaml").write_text("label: B\nsame_as: a\n")
    (datasets / "c.yaml").write_text("label: C\nsame_as: b\n")
    with pytest.raises(catalog.CatalogError, match=r"c\.yaml: key 'same_as' must name a dataset that is not "
                                                   r"itself a variant, got 'b'"):
        catalog.datasets(tmp_path)
    (datasets / "c.yaml").unlink()
    assert catalog.datasets(tmp_path)["b"].base == "a" and catalog.datasets(tmp_path)["b"].family == "uci"


# ---- the paper's published initialisations (Penn Treebank and CIFAR-10) ----------------------------------
def full_config():
    from onepass import study

    return study.validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                          yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))


@pytest.mark.parametrize("dataset", ["penn_treebank", "cifar10"])
def test_full_config_starts_penn_treebank_and_cifar10_from_the_papers_files(dataset, shared_datasets, tmp_path):
    """Seed 0 is the paper's iteration_1.yaml (lr and weight decay stored as log10, momentum as its logit,
    the commented lr_multiplier Random (xLR)'s factor), the same start for every algorithm."""
    from onepass import data, study, plans

    config = full_config()
    inits = data.fetch_inits(dataset, tmp_path, [shared_datasets], download=False)
    first = {"lr": 10 ** -2.6439003944396973, "weight_decay": 10 ** -2.2671117782592773,
             "momentum": 1 / (1 + math.exp(-0.7543273973426775))}
    members = {a: study.member_of(config, dataset, a, 0, inits) for a in study.algorithms(config, dataset)}
    for algorithm, member in members.items():
        assert {k: member[k] for k in first} == first, algorithm
    assert members["Random_SteppedLR"]["settings"] == {"lr_step_factor": 0.9998821020126343}
    assert members["Random"]["settings"] == {}
    # seed s is file s + 1, for every algorithm alike
    s = 17
    stored = yaml.safe_load(inits[s + 1].read_text())["config_dicts"]["network_weight"]
    for algorithm in study.algorithms(config, dataset):
        member = study.member_of(config, dataset, algorithm, s, inits)
        assert member["lr"] == 10 ** stored["lr"] and member["weight_decay"] == 10 ** stored["weight_decay"]
        assert member["momentum"] == 1 / (1 + math.exp(-stored["momentum"]))
    # the chunk plan (written before the files are fetched) refers to them by number and SHA-256; resolving
    # it reads the same values
    plan = study.chunk_plan(config, dataset, "Random_SteppedLR", [0, 1, 17])
    assert plan["members"][0]["lr"] == {"file": 1} and plan["members"][2]["settings"] == {"lr_step_factor": {"file": 18}}
    assert plan["init_files"]["18"] == data.init_digests(dataset)[18]
    os.environ["ONEPASS_DATA_MIRRORS"], old = str(shared_datasets), os.environ.get("ONEPASS_DATA_MIRRORS")
    try:
        resolved = plans.resolve_chunk_plan(plan, tmp_path / "fresh")
    finally:
        os.environ.pop("ONEPASS_DATA_MIRRORS") if old is None else os.environ.update(ONEPASS_DATA_MIRRORS=old)
    assert resolved["members"] == [study.member_of(config, dataset, "Random_SteppedLR", s, inits) for s in (0, 1, 17)]
    out = tmp_path / "plan.json"   # the chunk-plan command of the rule chunk_plan_from_files
    os.environ["ONEPASS_DATA_MIRRORS"] = str(shared_datasets)
    assert study.main(["chunk-plan", "--plan", json.dumps(plan), "--data-dir", str(tmp_path / "d"), "--out", str(out)]) == 0
    os.environ.pop("ONEPASS_DATA_MIRRORS") if old is None else os.environ.update(ONEPASS_DATA_MIRRORS=old)
    assert json.loads(out.read_text())["members"] == resolved["members"]
    # the other datasets still draw theirs
    assert not study.takes_files(config, "uci_energy") and not study.takes_files(config, "fashion_mnist")


def test_the_sweep_command_fetches_the_files_and_writes_their_values(shared_datasets, tmp_path, monkeypatch):
    from onepass import study

    config = full_config()
    monkeypatch.setenv("ONEPASS_DATA_MIRRORS", str(shared_datasets))
    small = study.dataset_config({**config, "sweep": {**config["sweep"],
                                                      "initialisations": {"penn_treebank": 3}}}, "penn_treebank")
    assert study.main(["sweep", "--config", json.dumps(small), "--dataset", "penn_treebank",
                       "--out-dir", str(tmp_path / "sweep"), "--data-dir", str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "penn_treebank").iterdir())[:2] == [
        "paper_init_1.yaml", "paper_init_10.yaml"]
    table = pd.read_csv(tmp_path / "sweep" / "initialisations.tsv", sep="\t")
    assert table.loc[0, "lr"] == 10 ** -2.6439003944396973
    assert table.loc[0, "lr_step_factor"] == 0.9998821020126343
    plan = json.loads((tmp_path / "sweep" / "plan.json").read_text())
    assert plan["initialisations"][0]["momentum"] == 1 / (1 + math.exp(-0.7543273973426775))


def test_more_initialisations_than_files_or_a_dataset_without_files_is_refused():
    from onepass import study

    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    raw["sweep"]["initialisations"]["cifar10"] = 101
    with pytest.raises(study.StudyConfigError, match=r"config key 'sweep\.initialisations\.cifar10' in "
                                                     r"config/config\.yaml: 101 initialisations requested, but "
                                                     r"the paper published 100"):
        study.validate(raw, schema, [("config/config.yaml", raw)])
    raw["sweep"]["initialisations"]["cifar10"] = 100
    study.validate(raw, schema)  # 100 are there
    raw["sweep"]["samplers"]["lr"]["by_dataset"]["uci_energy"] = {"type": "from_files"}
    with pytest.raises(study.StudyConfigError, match=r"sweep\.samplers\.lr\.by_dataset\.uci_energy.*no "
                                                     r"published initialisation files"):
        study.validate(raw, schema)
    with pytest.raises(ValueError, match=r"sweep\.samplers\.hidden_units\.type: from_files can give only"):
        sweep.check_sampler("hidden_units", {"type": "from_files"})
# ---- packing: members_per_job, decided once ----------------------------------------------------------------
def cpu_study(algorithms, seeds, **extra):
    from onepass import study
    return study.apply_defaults({"study": "t", "datasets": ["uci_energy"], "algorithms": {"uci_energy": algorithms},
                                 "sweep": {**PAPER, "initialisations": {"uci_energy": seeds}},
                                 "gpu": {"uci_energy": 0}, **extra})


def test_auto_size_comes_from_the_estimated_job_time_never_the_machine():
    from onepass import packing, study
    config = cpu_study(["Ours_LR"], 50)
    ours = study.settings(config, "uci_energy", "Ours_LR")
    # 6 x 614 training rows x 501 parameters (8-50-1) x 4000 weight steps x 2 (Neumann) at 4e9 FLOP/s
    member_s = 6 * 614 * 501 * 4000 * 2.0 / 4e9
    assert ours["hidden_units"] == 50 and member_s == pytest.approx(3.691, abs=0.001)
    assert packing.size(config, "uci_energy", "Ours_LR") == math.floor(3600 / member_s) == 975
    # on two threads a member trains twice as fast: twice as many fit the hour
    two = {**config, "resources": {"default": {"threads": 2}}}
    assert packing.size(two, "uci_energy", "Ours_LR") == 1950
    # a number in the config wins
    assert packing.size({**config, "members_per_job": {"default": 7}}, "uci_energy", "Ours_LR") == 7
    # a GPU does not enter it
    assert packing.size({**config, "gpu": {"uci_energy": 1}, "device": "cuda"}, "uci_energy", "Ours_LR") == 975


def test_cut_makes_equal_chunks():
    from onepass import packing
    assert packing.cut(list(range(50)), 30) == [list(range(25)), list(range(25, 50))]
    assert [len(c) for c in packing.cut(list(range(200)), 96)] == [67, 67, 66]
    assert packing.cut([4, 5, 9], 10) == [[4, 5, 9]] and packing.cut([], 3) == []


def test_packing_keeps_its_chunks_and_packs_only_new_seeds(tmp_path, monkeypatch):
    from onepass import packing
    monkeypatch.chdir(tmp_path)
    config = cpu_study(["Random", "BayesOpt"], 4, members_per_job={"default": 2})
    first = packing.resolve(config, "uci_energy", save=True)
    assert first["chunks"] == {"Random": [[0, 1], [2, 3]], "BayesOpt": [[0, 1], [2, 3]]}
    assert packing.read(tmp_path / "results" / "t" / "packing" / "uci_energy.json") == first
    # the file is what later plans read, whatever they would choose now (here: chunks edited by hand, and a
    # plan on two threads, where auto-sizing would estimate another size)
    file = tmp_path / "results" / "t" / "packing" / "uci_energy.json"
    edited = {**first, "chunks": {**first["chunks"], "Random": [[0, 1, 2], [3]]}}
    file.write_text(json.dumps(edited))
    again = cpu_study(["Random", "BayesOpt"], 4, members_per_job={"default": 2}, resources={"default": {"threads": 2}})
    assert packing.resolve(again, "uci_energy", save=True) == edited
    file.write_text(json.dumps(first))
    # six seeds: the first four keep their chunks, the new two form a chunk of their own
    grown = cpu_study(["Random", "BayesOpt"], 6, members_per_job={"default": 2})
    assert packing.resolve(grown, "uci_energy", save=True)["chunks"]["Random"] == [[0, 1], [2, 3], [4, 5]]
    # a process that only reads (a cluster job) never writes
    more = cpu_study(["Random", "BayesOpt"], 8, members_per_job={"default": 2})
    assert packing.resolve(more, "uci_energy", save=False)["chunks"]["Random"][-1] == [6, 7]
    assert packing.read(packing.path(more, "uci_energy"))["chunks"]["Random"][-1] == [4, 5]


def test_a_changed_members_per_job_repacks_only_unfinished_runs():
    from onepass import packing
    old = {"format": 1, "members_per_job": 2, "chunks": {"Random": [[0, 1], [2, 3], [4, 5]]}}
    config = cpu_study(["Random"], 6, members_per_job={"default": 3})
    done = {0, 1, 4}          # chunk [0, 1] finished; [2, 3] not started; [4, 5] half
    new = packing.extend(config, "uci_energy", old, lambda a, s: s in done)
    # [0, 1] kept; 2, 3, 4, 5 cut anew, at most 3 a job, in equal chunks
    assert new["chunks"]["Random"] == [[0, 1], [2, 3], [4, 5]]
    new = packing.extend({**config, "members_per_job": {"default": 4}}, "uci_energy", old, lambda a, s: s in done)
    assert new["chunks"]["Random"] == [[0, 1], [2, 3, 4, 5]]
    assert new["members_per_job"] == 4
    # the same members_per_job: every chunk kept, finished or not
    same = packing.extend({**config, "members_per_job": {"default": 2}}, "uci_energy", old, lambda a, s: False)
    assert same["chunks"] == old["chunks"]


def test_repack_command_drops_the_unfinished_chunks(tmp_path):
    from onepass import packing
    file = tmp_path / "results" / "t" / "packing" / "uci_energy.json"
    packing.write(file, {"format": 1, "study": "t", "dataset": "uci_energy", "members_per_job": "auto",
                         "chunks": {"Random": [[0, 1], [2, 3]]}})
    for seed in (0, 1, 2):
        run = tmp_path / "results" / "t" / "runs" / "uci_energy" / "Random" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}")
        (run / "history.csv").write_text("")
    assert packing.main(["repack", str(file)]) == 0
    assert packing.read(file)["chunks"] == {"Random": [[0, 1]]}
    assert packing.main(["repack", "--all", str(file)]) == 0
    assert packing.read(file)["chunks"] == {"Random": []}
    (file.parent / "bad.json").write_text("[]")
    with pytest.raises(packing.PackingError, match="bad.json is not a packing"):
        packing.read(file.parent / "bad.json")
