"""Numbers and true/false given with Snakemake's --config, which hands nested values over as text: read as the
types that the config schema and the settings table declare (onepass.config_text, onepass.settings.from_text),
while a value that fits no declared type keeps its one-line error. The text comes from Snakemake's own parser
of --config, and the end-to-end test runs Snakemake on a tiny study."""

import json
import subprocess
import sys

import pytest
import yaml
from snakemake.cli import parse_config

from onepass import study
from onepass.config_text import typed
from onepass.settings import ConfigError, check_value, from_text, read_as


def given(*entries: str) -> dict:
    """What Snakemake makes of ``--config ENTRY ...``."""
    return parse_config(list(entries))


# ---- one value ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,text,value", [
    ("weight_steps", "2000", 2000),          # integer or null
    ("weight_steps", "null", None),
    ("hidden_units", "-3", -3),              # an integer, for the domain check to refuse
    ("hyper_lr", "0.02", 0.02),              # number
    ("hyper_lr", "1e-3", 0.001),
    ("hyper_lr", "3", 3),                    # an integer, as YAML reads 3 in a config file
    ("clip_grad_norm", "NULL", None),        # number or null
    ("lr_per_weight", "true", True),         # true/false
    ("track_min_test", "False", False),
    ("lr", ".5", 0.5),                       # an initial hyperparameter is a number
    ("search_log10_lr", ["-5", "-2.5"], [-5, -2.5]),       # a list's numbers
    ("optimise", ["lr", "momentum"], ["lr", "momentum"]),  # and its names
    ("model", "123", "123"),                 # text where the setting is text
    ("no_such_setting", "5", "5"),           # left for the check to name
])
def test_text_is_read_as_the_declared_type(key, text, value):
    read = from_text(key, text)
    assert read == value and type(read) is type(value)
    if isinstance(value, list):
        assert [type(v) for v in read] == [type(v) for v in value]


@pytest.mark.parametrize("key,text,message", [
    ("weight_steps", "2000.5", "setting 'weight_steps' must be integer or null, got '2000.5'"),
    ("weight_steps", "many", "setting 'weight_steps' must be integer or null, got 'many'"),
    ("hidden_units", "null", "setting 'hidden_units' must be integer, got 'null'"),
    ("lr_per_weight", "yes", "setting 'lr_per_weight' must be true/false, got 'yes'"),
    ("lr_per_weight", "1", "setting 'lr_per_weight' must be true/false, got '1'"),
    ("hyper_lr", "0x10", "setting 'hyper_lr' must be number, got '0x10'"),
])
def test_text_that_fits_no_declared_type_keeps_its_error(key, text, message):
    value = from_text(key, text)
    assert value == text
    with pytest.raises(ConfigError) as err:
        check_value(key, value, "")
    assert str(err.value) == message


def test_only_text_is_read():
    assert read_as((int,), 7) == 7 and read_as((int,), 7.5) == 7.5 and read_as((bool,), None) is None
    assert read_as((int, str), "7") == "7"


# ---- a whole --config ----------------------------------------------------------------------------------------
def test_nested_values_from_config_are_read_as_the_schema_and_settings_declare():
    text = given('overrides={"uci_yacht": {"all": {"weight_steps": 2000, "hyper_lr": 0.02, "lr_per_weight": true,'
                 ' "clip_grad_norm": null, "model": "mlp"}}}',
                 'sweep={"initialisations": {"uci_yacht": 3}, "samplers": {"lr": {"type": "uniform",'
                 ' "range": [0, 0.1]}, "batch_size": {"type": "choice", "values": [32, 64],'
                 ' "by_dataset": {"uci_yacht": {"values": [16]}}}}}',
                 'members_per_job={"default": 4, "uci_energy": "auto"}',
                 'gpu={"uci_yacht": 0}', "appendix=null", "study=tiny")
    assert text["overrides"]["uci_yacht"]["all"]["weight_steps"] == "2000"   # Snakemake's text, as the issue saw
    assert typed(text, text, study.schema()) == {
        "overrides": {"uci_yacht": {"all": {"weight_steps": 2000, "hyper_lr": 0.02, "lr_per_weight": True,
                                            "clip_grad_norm": None, "model": "mlp"}}},
        "sweep": {"initialisations": {"uci_yacht": 3},
                  "samplers": {"lr": {"type": "uniform", "range": [0, 0.1]},
                               "batch_size": {"type": "choice", "values": [32, 64],
                                              "by_dataset": {"uci_yacht": {"values": [16]}}}}},
        "members_per_job": {"default": 4, "uci_energy": "auto"},
        "gpu": {"uci_yacht": 0}, "appendix": None, "study": "tiny"}


def test_only_what_config_sets_is_read():
    """Text from a config file is the file's (a quoted number stays text, for the checks to refuse), and text
    that means text stays text."""
    config = {"overrides": {"all": {"all": {"weight_steps": "7", "log_every": "10"}}}, "table_statistic": "sample",
              "study": "s1"}
    text = given('overrides={"all": {"all": {"log_every": 10}}}', "table_statistic=sample", "study=s1")
    out = typed(config, text, study.schema())
    assert out == {"overrides": {"all": {"all": {"weight_steps": "7", "log_every": 10}}},
                   "table_statistic": "sample", "study": "s1"}
    assert config["overrides"]["all"]["all"]["log_every"] == "10"   # the config given is not changed


def test_a_bad_value_from_config_stops_with_the_one_line_error():
    config = {"datasets": ["uci_yacht"], "algorithms": {"uci_yacht": ["Random"]},
              "sweep": {"seed": 1, "samplers": {"lr": {"type": "uniform", "range": [0, 0.1]},
                                                "weight_decay": {"type": "uniform", "range": [0, 0.1]},
                                                "momentum": {"type": "uniform", "range": [0, 0.9]}},
                        "initialisations": {"uci_yacht": 2}}}
    for weight_steps, ok in (("2000", True), ("2000.5", False)):
        text = given(f'overrides={{"uci_yacht": {{"all": {{"weight_steps": {weight_steps}}}}}}}')
        config["overrides"] = text["overrides"]
        sources = [("study.yaml", config, False), ("--config", text, True)]
        if ok:
            assert study.validate(typed(config, text, study.schema()), study.schema(), sources)[
                "overrides"]["uci_yacht"]["all"]["weight_steps"] == 2000
        else:
            with pytest.raises(study.StudyConfigError) as err:
                study.validate(typed(config, text, study.schema()), study.schema(), sources)
            assert str(err.value) == ("config key 'overrides.uci_yacht.all.weight_steps' in --config: setting "
                                      "'weight_steps' must be integer or null, got '2000.5'")


# ---- Snakemake, for real -------------------------------------------------------------------------------------
TINY = {"study": "tiny", "datasets": ["uci_energy"], "algorithms": {"uci_energy": ["Random"]},
        "sweep": {"initialisations": {"uci_energy": 2}}, "members_per_job": {"default": 2}, "appendix": None,
        "gpu": {"uci_energy": 0}}
OVERRIDES = {"uci_energy": {"all": {"weight_steps": 30, "log_every": 10, "hyper_lr": 0.03, "track_min_test": True}}}
RUN = "results/tiny/runs/uci_energy/Random/seed{}/metrics.json"


def snakemake(workdir, *args):
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.mark.pipeline
def test_a_nested_number_from_config_trains_with_that_number(tmp_path, copy_workflow, mirror):
    workdir = copy_workflow(tmp_path / "wf", {**TINY, "data_mirrors": [mirror]})
    targets = [RUN.format(seed) for seed in range(2)]
    snakemake(workdir, *targets, "--profile", "profiles/local", "--cores", "1", "--configfile", "tiny.yaml",
              "--config", f"overrides={json.dumps(OVERRIDES)}")
    for target in targets:
        metrics = json.loads((workdir / target).read_text())
        assert metrics["weight_steps"] == 30 and metrics["hyperparameter_steps"] == 3   # T = 10: 3 x 10 steps
        assert metrics["settings"]["weight_steps"] == 30 and metrics["settings"]["hyper_lr"] == 0.03
        assert "min_test_metric" in metrics                                         # track_min_test: true
        history = (workdir / target).with_name("history.csv").read_text().splitlines()
        assert [int(row.split(",")[0]) for row in history[1:]] == [0, 10, 20, 30]
    # the same numbers written in a config file are the same runs: nothing to retrain
    (workdir / "same.yaml").write_text(yaml.safe_dump({"overrides": OVERRIDES}))
    output = snakemake(workdir, *targets, "-n", "--configfile", "tiny.yaml", "same.yaml")
    assert "Nothing to be done" in output, output[-3000:]
