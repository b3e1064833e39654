"""Shared pytest fixtures."""

import shutil
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The offline dataset copies next to the repository (../shared/datasets); skips when absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"offline dataset copies not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """Debian's dataset-fashion-mnist files; skips when the package is not installed."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DIR


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
