"""Shared pytest fixtures.

Tests find the offline dataset copies as users do: in the directories of ``ONEPASS_DATA_MIRRORS``
(``:``-separated), then in ``../shared/datasets`` beside the checkout. Where data are missing a test skips,
except under CI (``CI=true``), where it fails: CI can never pass by skipping.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
FASHION_MNIST_FILE = "train-images-idx3-ubyte.gz"
MIRRORS_AT_START = os.environ.get("ONEPASS_DATA_MIRRORS", "")  # before any test changes the environment


def mirrors() -> list[Path]:
    """The mirror directories tests look in: ONEPASS_DATA_MIRRORS, then ../shared/datasets."""
    found = [Path(d) for d in MIRRORS_AT_START.split(":") if d]
    return [d.resolve() for d in [*found, SHARED_DATASETS] if d.is_dir()]


def mirror_with(*relpaths: str) -> Path | None:
    """The first mirror holding one of ``relpaths``."""
    for mirror in mirrors():
        if any((mirror / rel).is_file() for rel in relpaths):
            return mirror
    return None


def missing_data(message: str):
    """Skip for want of data, or fail under CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: tests must not skip for missing data; set ONEPASS_DATA_MIRRORS)")
    pytest.skip(message)


def require_mirror(*relpaths: str) -> Path:
    mirror = mirror_with(*relpaths)
    if mirror is None:
        missing_data(f"no mirror holds {relpaths[0]} (looked in ONEPASS_DATA_MIRRORS and {SHARED_DATASETS})")
    return mirror


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """A mirror laid out like ../shared/datasets (uci_*/data.txt, ...)."""
    return require_mirror("uci_energy/data.txt")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """A mirror holding the Fashion-MNIST .gz files (Debian's dataset-fashion-mnist, for one)."""
    return require_mirror(FASHION_MNIST_FILE, f"fashion_mnist/{FASHION_MNIST_FILE}",
                          f"fashion-mnist/{FASHION_MNIST_FILE}")


@pytest.fixture(scope="module")
def float64_default(one_torch_thread):
    """float64 as torch's default dtype for the module (the population builds its network in it), on one
    thread: exact comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: bitwise comparisons need the same thread count in every run,
    and two threads on a busy 2-core machine crawl."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def uci_energy_dir(shared_datasets, tmp_path_factory) -> Path:
    """A data directory with UCI Energy prepared from the offline copy."""
    from onepass import data

    path = tmp_path_factory.mktemp("energy-data")
    data.prepare("uci_energy", path, mirrors=[shared_datasets])
    return path


@pytest.fixture(scope="session")
def data_dir(uci_energy_dir) -> Path:
    """The data directory of the training and search tests: UCI Energy prepared."""
    return uci_energy_dir


@pytest.fixture(scope="session")
def mirror() -> str:
    """The mirror holding UCI Energy's raw file, as a workflow's data_mirrors entry."""
    return str(require_mirror("uci_energy/data.txt"))


@pytest.fixture(scope="session")
def fashion_mnist_data(fashion_mnist_dir, tmp_path_factory) -> Path:
    """A data directory with Fashion-MNIST prepared from the offline copy."""
    from onepass import data

    path = tmp_path_factory.mktemp("fmnist-data")
    data.prepare("fashion_mnist", path, mirrors=[fashion_mnist_dir])
    return path


WORKFLOW_FILES = ["Snakefile", "workflow", "config", "onepass", "profiles", "envs", "pyproject.toml"]


@pytest.fixture(scope="session")
def copy_workflow():
    """A function copying the workflow's files into ``dest`` (so that tests never write into the
    repository's results/), with ``config`` written there as tiny.yaml when given."""
    import yaml

    def copy(dest: Path, config: dict | None = None) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        for name in WORKFLOW_FILES:
            src = REPO_ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dest / name)
        if config is not None:
            (dest / "tiny.yaml").write_text(yaml.safe_dump(config))
        return dest

    return copy
