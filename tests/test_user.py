"""A dataset of one's own: a catalogue directory outside the project, a dataset YAML naming the user's
data and model functions (module:function), the data prepared from them, their networks trained as
populations where torch.func batches them and one at a time where it does not, and errors that name the
YAML key and the function."""

import sys
import textwrap

import pytest
import torch
import yaml

from onepass import catalog, data, study, train, user
from onepass.population import Member, Population
from onepass.problems import batchable, to_device
from onepass.settings import load_settings

MODULE = '''
import torch
from torch import nn


def splits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g)
    y = x.sum(1) + 0.1 * torch.randn(60, generator=g)
    return (x[:40], y[:40]), (x[40:50], y[40:50]), (x[50:], y[50:])


def loader_splits():
    x, y = splits()[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    return {"train": loader, "validation": splits()[1], "test": splits()[2]}


def classes():
    x = torch.arange(12.0).reshape(6, 2)
    return (x, torch.tensor([0, 1, 2, 0, 1, 2])), (x, torch.tensor([0, 1, 2, 0, 1, 2])), (x, torch.tensor([2] * 6))


def two_splits():
    return splits()[:2]


def ragged():
    (x, y), v, t = splits()
    return (x, y[:10]), v, t


def network():
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))


def dropout_network():
    return nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.2), nn.Linear(5, 1))


def not_a_network():
    return [1, 2]
'''


@pytest.fixture()
def user_catalog(tmp_path, monkeypatch):
    """An extra catalogue directory holding datasets/mine.yaml and, one level up, the user's module."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_problem.py").write_text(MODULE)
    root = tmp_path / "catalog"
    (root / "datasets").mkdir(parents=True)
    monkeypatch.setenv(catalog.CATALOG_ENV, "")    # restored after the test, as the directories added
    monkeypatch.setattr(catalog, "ADDED", [])
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name="mine", **keys):
        entry = {"label": "Mine", "task": "regression", "metric": "test MSE", "data": "my_problem:splits",
                 "model": "my_problem:network", "path": "../../code",
                 "settings": {"batch_size": 8, "weight_steps": 20, "log_every": 10}, **keys}
        (root / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump(entry))
        catalog.add_directories([root])
        return root

    yield write
    sys.modules.pop("my_problem", None)


def test_a_dataset_of_ones_own_is_in_the_catalogue(user_catalog):
    root = user_catalog()
    entry = catalog.dataset("mine")
    assert entry.is_user and entry.family == "user" and entry.function == "my_problem:splits"
    assert entry.path == str((root.parent / "code").resolve())
    assert entry.settings["model"] == "my_problem:network"
    assert "uci_energy" in catalog.datasets()            # config/'s datasets beside it
    settings = load_settings("mine", "Baydin")
    assert settings["model"] == "my_problem:network" and settings["hyperparameter_steps"] == 20


@pytest.mark.parametrize("keys,message", [
    ({"data": "my_problem.splits"}, "key 'data' must name a function as module:function"),
    ({"model": "my_problem:"}, "key 'model' must name a function as module:function"),
    ({"family": "uci"}, r"key 'family' must be user \(or absent\)"),
    ({"task": "language_model"}, "key 'task' must be one of regression, classification"),
    ({"name_clash": True}, "dataset 'uci_energy' is already defined by"),
])
def test_bad_catalogue_entries_name_the_key(user_catalog, keys, message):
    if keys.pop("name_clash", False):
        user_catalog(name="uci_energy")
    else:
        user_catalog(**keys)
    with pytest.raises(catalog.CatalogError, match=message):
        catalog.datasets()


def test_data_are_prepared_from_the_function_as_given(user_catalog, tmp_path):
    user_catalog()
    data.prepare("mine", tmp_path / "data")
    ds = data.load("mine", tmp_path / "data")
    (x, y), _, (xt, yt) = __import__("my_problem").splits()
    assert torch.equal(ds.train[0], x) and torch.equal(ds.train[1], y.unsqueeze(1))
    assert torch.equal(ds.test[0], xt) and ds.input_shape == (3,) and ds.task == "regression"
    assert ds.target_scale == 1.0


def test_loaders_and_classes(user_catalog, tmp_path):
    user_catalog(name="loaded", data="my_problem:loader_splits")
    user_catalog(name="classes", data="my_problem:classes", task="classification", model="mlp")
    loaded = user.splits(catalog.dataset("loaded"))
    assert torch.equal(loaded["train"][0], __import__("my_problem").splits()[0][0])
    data.prepare("classes", tmp_path)
    ds = data.load("classes", tmp_path)
    assert ds.num_classes == 3 and ds.train[1].dtype == torch.int64


@pytest.mark.parametrize("function,message", [
    ("my_problem:two_splits", r"key 'data' \(my_problem:two_splits\) must return \(train, validation, test\), "
                              r"got tuple of 2"),
    ("my_problem:ragged", r"key 'data' \(my_problem:ragged\) returned a train split that is wrong: inputs and "
                          r"targets must have the same"),
    ("my_problem:nowhere", r"key 'data': module 'my_problem' has no function 'nowhere'"),
    ("nowhere:splits", r"key 'data': cannot import module 'nowhere' of nowhere:splits \(ModuleNotFoundError"),
])
def test_a_wrong_data_function_is_an_error_naming_key_and_function(user_catalog, tmp_path, function, message):
    user_catalog(data=function)
    with pytest.raises(data.DataError, match=message):
        data.prepare("mine", tmp_path)
    assert not (tmp_path / "mine").exists()           # nothing half-written


def test_a_wrong_model_function_is_an_error_naming_key_and_function(user_catalog, tmp_path):
    user_catalog(model="my_problem:not_a_network")
    data.prepare("mine", tmp_path)
    with pytest.raises(user.UserCodeError, match=r"mine.yaml: key 'model' \(my_problem:not_a_network\) must "
                                                 r"return a torch.nn.Module, got list"):
        train.train("mine", "Random", [Member(0, 0.01, 0.0, 0.0)], tmp_path, [tmp_path / "r"], tmp_path / "c")


def test_batched_population_member_is_its_population_of_one(user_catalog, tmp_path):
    """torch.func batches the user's network: member i of a population is the population of one of seed i."""
    user_catalog()
    data.prepare("mine", tmp_path)
    ds = to_device(data.load("mine", tmp_path), "cpu")
    settings = load_settings("mine", "Ours_LR_Momentum")
    assert batchable(settings, ds)
    members = [Member(s, 0.05, 1e-3, 0.5) for s in range(3)]
    pop = Population(settings, ds, members, "cpu")
    alone = Population(settings, ds, members[2:], "cpu")
    for _ in range(2):
        pop.step()
        alone.step()
    for a, b in zip(pop.params, alone.params):
        torch.testing.assert_close(a[2], b[0], rtol=1e-5, atol=1e-6)
    assert pop.hyperparameters()["lr"][2] == pytest.approx(alone.hyperparameters()["lr"][0], rel=1e-5)


def test_a_network_vmap_cannot_batch_trains_one_member_at_a_time(user_catalog, tmp_path):
    """Dropout draws random numbers, which vmap refuses: the members train one after another, each as its own
    population of one, with the usual outputs."""
    user_catalog(model="my_problem:dropout_network")
    data.prepare("mine", tmp_path)
    ds = data.load("mine", tmp_path)
    assert not batchable(load_settings("mine", "Random"), ds)
    members = [Member(s, 0.05, 1e-3, 0.5) for s in range(2)]
    metrics = train.train("mine", "Ours_LR", members, tmp_path, [tmp_path / f"r{s}" for s in range(2)],
                          tmp_path / "c")
    assert [m["population_size"] for m in metrics] == [1, 1]
    single = train.train("mine", "Ours_LR", members[1:], tmp_path, [tmp_path / "s1"], tmp_path / "c1")
    assert metrics[1]["test_metric"] == single[0]["test_metric"]
    assert (tmp_path / "r0" / "history.csv").is_file()


def test_the_study_check_imports_the_functions(user_catalog, repo_root):
    root = user_catalog(model="my_problem:nowhere")
    schema = yaml.safe_load((repo_root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = {"catalog": [str(root)], "datasets": ["mine"], "algorithms": {"mine": ["Random"]},
              "sweep": {"seed": 1, "samplers": {"lr": {"type": "log_uniform", "range": [1e-3, 1e-1]},
                                                "weight_decay": {"type": "log_uniform", "range": [1e-6, 1e-3]},
                                                "momentum": {"type": "uniform", "range": [0, 1]}},
                        "initialisations": {"mine": 2}}}
    with pytest.raises(study.StudyConfigError, match=r"^config key 'datasets.0' in the config: .*mine.yaml: key "
                                                     r"'model': module 'my_problem' has no function 'nowhere'"):
        study.validate(config, schema)
    with pytest.raises(study.StudyConfigError, match="config key 'catalog' in the config: catalogue directory "
                                                     "/nonexistent does not exist"):
        study.validate({**config, "catalog": ["/nonexistent"]}, schema)


def test_module_doc_example_is_a_valid_entry(tmp_path, monkeypatch):
    """The YAML in onepass.user's docstring is a valid catalogue entry."""
    doc = user.__doc__.split("\n\n")[1]
    entry = yaml.safe_load(textwrap.dedent("\n".join(doc.splitlines()[1:])))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "my_problem.yaml").write_text(yaml.safe_dump(entry))
    monkeypatch.setenv(catalog.CATALOG_ENV, "")
    monkeypatch.setattr(catalog, "ADDED", [])
    catalog.add_directories([tmp_path])
    assert catalog.dataset("my_problem").function == "my_problem:splits"
