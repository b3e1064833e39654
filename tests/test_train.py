"""The single-run command: every algorithm, reproducibility, resume, divergence, bad configs."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from onepass import data
from onepass.settings import ConfigError, load_settings
from onepass.train import HISTORY_COLUMNS, main, run

ALGORITHMS = ["Random", "Random_SteppedLR", "Random_Validation", "Lorraine", "Baydin", "Ours_LR",
              "Ours_LR_Momentum", "Ours_HDLR_Momentum", "DiffThroughOpt", "LongDiffThroughOpt_Standalone",
              "LongDiffThroughOpt_Medium", "LongDiffThroughOpt_Full"]
SHORT = ["hyperparameter_steps=6", "log_every=20", "checkpoint_every=3"]
LONG_SHORT = ["update_interval=8", "unroll_steps=8"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Bitwise comparisons and timings need one torch thread (subprocesses get --threads 1)."""


@pytest.fixture(scope="module")
def data_dir(uci_energy_dir):
    return uci_energy_dir


def energy(tmp_path, data_dir, algorithm, overrides=(), lr=1e-3, wd=1e-4, mom=0.5, seed=0, name="run"):
    return run("uci_energy", algorithm, seed, lr, wd, mom, data_dir, tmp_path / name, overrides=list(overrides))


def without_times(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith("time_s")}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_and_writes_its_outputs(algorithm, data_dir, tmp_path):
    extra = LONG_SHORT if algorithm.startswith("Long") else []
    m = energy(tmp_path, data_dir, algorithm, SHORT + extra)
    out = tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert not m["diverged"] and math.isfinite(m["test_loss"])
    assert m["test_mse_unnormalised"] == m["test_metric"] and m["test_accuracy"] is None
    assert m["hyperparameter_steps"] == 6
    T = 8 if algorithm.startswith("Long") else (1 if algorithm == "Baydin" else 10)
    assert m["weight_steps"] == 6 * T
    header, *rows = (out / "history.csv").read_text().splitlines()
    assert header.split(",") == HISTORY_COLUMNS
    # logged every 20 weight steps (at the end of the hyperparameter step that reaches them) and at the end
    expected = {1: [0, 6], 10: [0, 20, 40, 60], 8: [0, 24, 40, 48]}[T]
    assert [int(r.split(",")[0]) for r in rows] == expected
    assert (out / "checkpoint.pt").exists() and any((out / "tb").iterdir())
    settings = load_settings("uci_energy", algorithm)
    for name in ("lr", "weight_decay", "momentum"):
        changed = m[f"final_{name}"] != pytest.approx(m[f"init_{name}"], rel=1e-5)
        stepped = algorithm == "Random_SteppedLR" and name == "lr"
        assert changed == (name in settings["optimise"] or stepped), name


def test_random_stepped_lr_multiplies_the_learning_rate(data_dir, tmp_path):
    m = energy(tmp_path, data_dir, "Random_SteppedLR", SHORT + ["lr_step_factor=0.95"])
    assert m["final_lr"] == pytest.approx(1e-3 * 0.95 ** 6, rel=1e-5)


def test_same_seed_gives_bitwise_identical_metrics(data_dir, tmp_path):
    a = energy(tmp_path, data_dir, "Ours_HDLR_Momentum", SHORT, name="a")
    b = energy(tmp_path, data_dir, "Ours_HDLR_Momentum", SHORT, name="b")
    c = energy(tmp_path, data_dir, "Ours_HDLR_Momentum", SHORT, name="c", seed=1)
    assert without_times(a) == without_times(b)
    assert a["test_loss"] != c["test_loss"]


def cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "onepass.train", *args, "--threads", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_run_resumes_to_the_same_metrics(data_dir, tmp_path):
    args = ["--dataset", "uci_energy", "--algorithm", "Ours_LR_Momentum", "--seed", "3", "--lr", "1e-4",
            "--weight-decay", "1e-5", "--momentum", "0.3", "--data-dir", str(data_dir),
            "--set", "hyperparameter_steps=300", "--set", "checkpoint_every=7", "--set", "log_every=50"]
    reference = cli(args + ["--out", str(tmp_path / "ref")])
    assert reference.wait(120) == 0, reference.stderr.read()

    out = tmp_path / "killed"
    victim = cli(args + ["--out", str(out)])
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "metrics.json").exists()
    resumed = cli(args + ["--out", str(out)])
    assert resumed.wait(120) == 0
    assert "resumed from" in resumed.stderr.read()
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert without_times(got) == without_times(ref)
    # the history is complete and equal too (apart from its timing column)
    strip = lambda p: [r.split(",")[:2] + r.split(",")[3:] for r in p.read_text().splitlines()]
    assert strip(out / "history.csv") == strip(tmp_path / "ref" / "history.csv")


def test_checkpoint_of_other_arguments_is_refused(data_dir, tmp_path):
    energy(tmp_path, data_dir, "Random", SHORT)
    with pytest.raises(ConfigError, match="other arguments"):
        energy(tmp_path, data_dir, "Random", SHORT, lr=0.5)


@pytest.mark.parametrize("overrides,why", [([], "default"), (["divergence_threshold=1e-6"], "threshold")])
def test_divergence_is_recorded_and_exits_zero(data_dir, tmp_path, capsys, overrides, why):
    code = main(["--dataset", "uci_energy", "--algorithm", "Random", "--seed", "0", "--lr", "0.9",
                 "--weight-decay", "1e-4", "--momentum", "0.99", "--data-dir", str(data_dir),
                 "--out", str(tmp_path / why), "--quiet", "--set", "hyperparameter_steps=100", *sum(
                     (["--set", o] for o in overrides), [])])
    assert code == 0
    assert "DIVERGED" in capsys.readouterr().out
    m = json.loads((tmp_path / why / "metrics.json").read_text())
    assert m["diverged"] is True
    assert all(math.isnan(m[k]) for k in ("train_loss", "valid_loss", "test_loss", "test_metric"))
    assert m["hyperparameter_steps"] < 100
    if why == "threshold":
        assert m["hyperparameter_steps"] == 1


@pytest.mark.parametrize("args,key", [
    (["--algorithm", "NoSuchAlgorithm"], "NoSuchAlgorithm"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--set", "hyperparameter_steps=ten"], "hyperparameter_steps"),
    (["--set", "optimise=[lr, temperature]"], "temperature"),
    (["--momentum", "1.5"], "--momentum"),
])
def test_bad_config_exits_nonzero_naming_the_key(args, key, data_dir, tmp_path, capsys):
    base = {"--dataset": "uci_energy", "--algorithm": "Random", "--seed": "0", "--lr": "0.01",
            "--weight-decay": "0.001", "--momentum": "0.5", "--data-dir": str(data_dir), "--out": str(tmp_path / "o")}
    if args[0] in base:
        base[args[0]] = args[1]
        args = []
    code = main(sum(([k, v] for k, v in base.items()), []) + args)
    assert code != 0
    err = capsys.readouterr().err
    assert key in err and err.startswith("error:")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_ours_beats_random_from_a_poor_start(data_dir, tmp_path):
    """The paper's claim in miniature: from lr = 1e-5, Ours (WD+LR+M) reaches far lower test MSE."""
    ours = energy(tmp_path, data_dir, "Ours_LR_Momentum", ["log_every=1000"], lr=1e-5, name="ours")
    rand = energy(tmp_path, data_dir, "Random", ["log_every=1000"], lr=1e-5, name="random")
    assert ours["final_lr"] > 1e-4
    assert ours["test_mse_unnormalised"] < 0.1 * rand["test_mse_unnormalised"]


def test_weight_step_budget_fits_every_algorithm():
    for algorithm, steps in (("Ours_LR", 30), ("Baydin", 300), ("LongDiffThroughOpt_Standalone", 2)):
        assert load_settings("uci_energy", algorithm, ["weight_steps=300"])["hyperparameter_steps"] == steps
    with pytest.raises(ConfigError, match="weight_steps"):
        load_settings("uci_energy", "Ours_LR", ["weight_steps=0"])


def test_family_settings_apply():
    assert load_settings("uci_energy", "Baydin")["hyperparameter_steps"] == 4000
    assert load_settings("fashion_mnist", "LongDiffThroughOpt_Standalone")["update_interval"] == 1000
    assert load_settings("uci_energy", "LongDiffThroughOpt_Standalone")["update_interval"] == 200
    assert load_settings("uci_energy", "Ours_LR", ["hyperparameter_steps=5"])["hyperparameter_steps"] == 5


# ---- the other dataset families, on small generated data ------------------------------------------------
def generated(tmp_path, name, make):
    """Prepare dataset ``name`` from files made by ``make(tmp_path) -> (mirror, sources table)``."""
    mirror, table = make(tmp_path)
    data.prepare(name, tmp_path / "data", mirrors=[mirror], sources=table)
    return data.load(name, tmp_path / "data")


def ptb_files(tmp_path):
    from test_data import make_ptb_archive, ptb_sources, ptb_texts
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    texts = ptb_texts()
    make_ptb_archive(mirror / "simple-examples.tgz", texts)
    return mirror, ptb_sources(tmp_path / "sources.tsv", texts)


def cifar_files(tmp_path):
    from test_data import cifar_setup
    mirror, table, _ = cifar_setup(tmp_path)
    return mirror, table


TINY_LSTM = ["hidden_units=12", "embedding_dim=8", "batch_size=4", "bptt=6", "eval_batch_size=3",
             "hyperparameter_steps=4", "log_every=20"]


@pytest.mark.parametrize("algorithm", ["Random", "Baydin", "Ours_HDLR_Momentum", "DiffThroughOpt"])
def test_penn_treebank_code_path(algorithm, tmp_path):
    ds = generated(tmp_path, "penn_treebank", ptb_files)
    m = run("penn_treebank", algorithm, 0, 0.5, 1e-5, 0.5, None, tmp_path / "run", overrides=TINY_LSTM, data=ds)
    assert m["task"] == "language_model" and not m["diverged"]
    assert m["test_perplexity"] == pytest.approx(math.exp(m["test_loss"]))
    assert 1 < m["test_perplexity"] < 2 * ds.vocab_size
    assert m["settings"]["clip_grad_norm"] == 0.25


def test_cifar10_code_path(tmp_path):
    ds = generated(tmp_path, "cifar10", cifar_files)
    m = run("cifar10", "Ours_LR_Momentum", 0, 0.01, 1e-4, 0.5, None, tmp_path / "run", data=ds,
            overrides=["model=mlp_bn", "hidden_units=8", "batch_size=10", "hyperparameter_steps=3", "log_every=10"])
    assert m["task"] == "classification" and 0 <= m["test_accuracy"] <= 1 and not m["diverged"]
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(RuntimeError, match="torchvision"):
            run("cifar10", "Random", 0, 0.01, 1e-4, 0.5, None, tmp_path / "resnet", data=ds,
                overrides=["batch_size=10", "hyperparameter_steps=1"])
    else:
        r = run("cifar10", "Ours_LR_Momentum", 0, 0.01, 1e-4, 0.5, None, tmp_path / "resnet", data=ds,
                overrides=["batch_size=10", "hyperparameter_steps=1", "eval_batch_size=20"])
        assert not r["diverged"]


def test_fashion_mnist_batchnorm_variant(fashion_mnist_dir, tmp_path):
    data.prepare("fashion_mnist", tmp_path / "data", mirrors=[fashion_mnist_dir])
    m = run("fashion_mnist", "Ours_LR_Momentum", 0, 0.01, 1e-4, 0.5, tmp_path / "data", tmp_path / "run",
            overrides=["model=mlp_bn", "hyperparameter_steps=20", "log_every=100"])
    assert m["test_accuracy"] > 0.5 and m["final_lr"] != pytest.approx(0.01)
