"""Tests of onepass.data: real UCI / Penn Treebank / Fashion-MNIST files where present, generated files
in the real formats (CIFAR-10 tar.gz of pickled batches, simple-examples.tgz, IDX .gz) and the error paths.
Both preprocessing choices: ``paper`` (the default, as the paper's code) and ``corrected``; the expected
numbers are recomputed here from the raw files, independently of the module."""

import dataclasses
import gzip
import hashlib
import http.server
import io
import pickle
import random
import struct
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from onepass import data
from onepass.data import DataError

UCI_INPUT_DIMS = {
    "uci_boston": 13,
    "uci_concrete": 8,
    "uci_energy": 8,
    "uci_kin8nm": 8,
    "uci_naval": 16,
    "uci_power": 4,
    "uci_wine": 11,
    "uci_yacht": 6,
}
PTB_MEMBER = "simple-examples/data/ptb.{}.txt"
@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch):
    """Tests pass their mirrors explicitly; the caller's environment must not leak in."""
    monkeypatch.delenv(data.MIRRORS_ENV, raising=False)


# --------------------------------------------------------------------------------------------- helpers


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def write_sources(path: Path, changes: dict) -> Path:
    """The project's sources table with rows changed: ``changes`` maps (dataset, file) to field updates."""
    rows = [
        dataclasses.replace(s, **changes.get((s.dataset, s.file), {}))
        for rs in data.read_sources().values()
        for s in rs
    ]
    lines = ["\t".join(data.SOURCE_COLUMNS)]
    lines += ["\t".join(getattr(s, col) or "-" for col in data.SOURCE_COLUMNS) for s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def make_tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A gzipped tar with regular-file ``members`` and extra (link, ...) entries."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info)
    return path


def random_text(rng: random.Random, words: list[str], lines: int) -> bytes:
    return "".join(" " + " ".join(rng.choices(words, k=rng.randint(1, 12))) + " \n" for _ in range(lines)).encode()


def ptb_texts() -> dict[str, bytes]:
    """Small train/valid/test texts in PTB's layout; valid and test hold one word unseen in training."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["<unk>", "N", "the"]
    texts = {s: random_text(rng, words, n) for s, n in (("train", 300), ("valid", 30), ("test", 40))}
    texts["valid"] += b" neverseen the \n"
    return texts


def make_ptb_archive(path: Path, texts: dict[str, bytes], extra=()) -> Path:
    return make_tar(path, {"./" + PTB_MEMBER.format(s): t for s, t in texts.items()}, extra)


def ptb_sources(path: Path, texts: dict[str, bytes]) -> Path:
    return write_sources(path, {("penn_treebank", f"ptb.{s}.txt"): {"sha256": sha256(t)} for s, t in texts.items()})


def cifar_batch(rng: np.random.Generator, n: int, label: str) -> bytes:
    """One batch in the real format (protocol-2 pickle of a dict with bytes keys)."""
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(batch, protocol=2)


def make_cifar_archive(path: Path, n: int = 20, test_batch: bytes | None = None) -> Path:
    rng = np.random.default_rng(0)
    members = {f"cifar-10-batches-py/data_batch_{i}": cifar_batch(rng, n, f"batch {i}") for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = test_batch or cifar_batch(rng, n, "test")
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2)
    return make_tar(path, members)


def cifar_setup(tmp_path: Path, archive_bytes: bytes | None = None, table_sha: str | None = None):
    """A mirror holding the CIFAR archive (optionally replaced by ``archive_bytes``) and a sources table."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = make_cifar_archive(mirror / "cifar-10-python.tar.gz")
    good = archive.read_bytes()
    if archive_bytes is not None:
        archive.write_bytes(archive_bytes)
    table = write_sources(
        tmp_path / "sources.tsv", {("cifar10", "cifar-10-python.tar.gz"): {"sha256": table_sha or sha256(good)}}
    )
    return mirror, table, good


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server serving a temporary directory: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_standardised(x: torch.Tensor, dims=0) -> None:
    """Mean ~0 and (population) std ~1 along ``dims``; constant columns (std 0) allowed."""
    x = x.double()
    assert torch.allclose(x.mean(dims), torch.zeros(()).double(), atol=1e-4)
    std = x.std(dims, unbiased=False)
    assert torch.all((std - 1).abs() < 1e-4) or torch.all(((std - 1).abs() < 1e-4) | (std < 1e-6))


# ----------------------------------------------------------------------------------------------- table


def test_sources_table_covers_every_dataset():
    table = data.read_sources()
    assert set(table) == set(data.datasets())
    for name, rows in table.items():
        assert all(s.sha256 for s in rows), name
    assert {s.file for s in table["fashion_mnist"]} == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    ptb_text = [s for s in table["penn_treebank"] if not s.file.startswith(data.INIT_PREFIX)]
    assert {s.member for s in ptb_text} == {PTB_MEMBER.format(s) for s in data.SPLITS}


def test_sources_table_matches_shared_sources(shared_datasets):
    """Every checksum of ../shared/datasets/SOURCES.tsv is in our table, with the offline path."""
    ours = {(s.mirror_path, s.sha256) for rows in data.read_sources().values() for s in rows}
    for line in (shared_datasets / "SOURCES.tsv").read_text().splitlines()[1:]:
        dataset, file, _url, digest, _note = line.split("\t")
        if len(digest) == 64 and not file.startswith("/"):
            assert (file, digest) in ours


def test_paper_inits_fetched_apart_from_the_data(shared_datasets, tmp_path):
    """The paper's published initialisations are rows of their dataset, fetched (and verified) by
    fetch_inits from the mirror's paper_inits_* folders, and no input of the dataset's preparation."""
    paths = data.fetch_inits("penn_treebank", tmp_path, [shared_datasets], download=False)
    assert sorted(paths) == list(range(1, 101))
    first = paths[1].read_text()  # the paper's PennTreebank/inits/iteration_1.yaml
    assert "lr: -2.6439003944396973" in first and "weight_decay: -2.2671117782592773" in first
    assert len(data.fetch_inits("cifar10", tmp_path, [shared_datasets], download=False)) == 100
    assert data.fetch_inits("uci_energy", tmp_path, [shared_datasets], download=False) == {}
    rows = data.read_sources()["penn_treebank"]
    assert sum(not s.file.startswith(data.INIT_PREFIX) for s in rows) == 3  # train, valid, test text


def test_bad_sources_table(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("\t".join(data.SOURCE_COLUMNS) + "\nuci_yacht\tdata.txt\thttp://x\t-\tnot-a-digest\t-\t-\n")
    with pytest.raises(DataError, match="sha256"):
        data.read_sources(bad)


# ------------------------------------------------------------------------------------------------- UCI


def uci_columns(table: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and target column of a UCI table (Naval: columns 1-16 and 17)."""
    if name == "uci_naval":
        return table[:, :16], table[:, 16:17]
    return table[:, :-1], table[:, -1:]


def unbiased_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and unbiased std; a constant column gets std 1 (Naval has two)."""
    std = rows.std(0, ddof=1)
    return rows.mean(0), np.where(std < 1e-9 * np.maximum(np.abs(rows.mean(0)), 1), 1.0, std)


@pytest.mark.parametrize("name", sorted(UCI_INPUT_DIMS))
def test_uci_prepared_from_shared_copies(name, shared_datasets, tmp_path):
    path = data.prepare(name, tmp_path / "a", mirrors=[shared_datasets])
    assert path == tmp_path / "a" / name / "prepared.pt"
    raw = shared_datasets / name / "data.txt"
    assert (tmp_path / "a" / name / "data.txt").read_bytes() == raw.read_bytes()
    table = np.loadtxt(raw)
    for preprocessing in data.PREPROCESSING:
        ds = data.load(name, tmp_path / "a", preprocessing)
        assert (ds.family, ds.task, ds.num_classes, ds.vocab_size) == ("uci", "regression", None, None)
        assert ds.input_shape == (UCI_INPUT_DIMS[name],) and ds.preprocessing == preprocessing
        for (x, y), size in zip((ds.train, ds.valid, ds.test), data.uci_splits(name)):
            assert x.shape == (size, UCI_INPUT_DIMS[name]) and x.dtype == torch.float32
            assert y.shape == (size, 1) and y.dtype == torch.float32
        # Unnormalised targets are the file's target column, each row used once.
        target = uci_columns(table, name)[1].ravel()
        all_y = torch.cat([ds.unnormalise_targets(y) for _, y in (ds.train, ds.valid, ds.test)]).double().flatten()
        np.testing.assert_allclose(np.sort(all_y.numpy()), np.sort(target), rtol=1e-5, atol=1e-5 * np.abs(target).max())
    # paper: train + valid together have mean 0 and unbiased std 1 (constant columns: 0).
    ds = data.load(name, tmp_path / "a")
    assert ds.preprocessing == "paper"
    for column in range(2):
        fit = torch.cat([ds.train[column], ds.valid[column]]).double()
        assert torch.allclose(fit.mean(0), torch.zeros(()).double(), atol=1e-5)
        std = fit.std(0, unbiased=True)
        assert torch.all(((std - 1).abs() < 1e-5) | ((std < 1e-6) & (name == "uci_naval")))
        assert not torch.allclose(ds.train[column].double().std(0, unbiased=False), torch.ones(()).double())
    # corrected: the training split alone has mean 0 and population std 1.
    ds = data.load(name, tmp_path / "a", "corrected")
    assert_standardised(ds.train[0])
    assert_standardised(ds.train[1])
    # Preparing again gives the same bytes.
    assert data.prepare(name, tmp_path / "b", mirrors=[shared_datasets]).read_bytes() == path.read_bytes()


@pytest.fixture(scope="module")
def energy(shared_datasets, tmp_path_factory):
    """UCI Energy prepared once for the module: (data dir, data.txt table, the paper's row order)."""
    root = tmp_path_factory.mktemp("energy")
    data.prepare("uci_energy", root, mirrors=[shared_datasets])
    table = np.loadtxt(shared_datasets / "uci_energy" / "data.txt")
    order = np.loadtxt(shared_datasets / "uci_energy" / "permutation_indices.txt", dtype=np.int64)
    return root, table, order


def test_uci_energy_paper_split(energy):
    """Default (paper): rows in permutation_indices.txt order, 614/78/76, normalised with train+valid's mean
    and unbiased std: test rows 0 and 75 are data.txt's rows at the file's positions 692 and 767."""
    root, table, order = energy
    assert order.shape == (768,) and order[[0, 614, 692, 767]].tolist() == [526, 41, 117, 723]
    mean, std = unbiased_stats(table[order[:692]])
    expected = (table[order] - mean) / std
    ds = data.load("uci_energy", root)
    for (x, y), rows in zip((ds.train, ds.valid, ds.test), (slice(0, 614), slice(614, 692), slice(692, 768))):
        np.testing.assert_allclose(x.numpy(), expected[rows, :8], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y.numpy(), expected[rows, 8:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.test[0][[0, -1]].numpy(), (table[[117, 723], :8] - mean[:8]) / std[:8], rtol=1e-5)
    np.testing.assert_allclose(ds.test[1][[0, -1], 0].numpy(), (table[[117, 723], 8] - mean[8]) / std[8], rtol=1e-5)
    np.testing.assert_allclose(ds.normalisers["y_std"].item(), table[order[:692], 8].std(ddof=1), rtol=1e-6)
    assert ds.target_scale == pytest.approx(table[order[:692], 8].std(ddof=1), rel=1e-6)
    assert ds.target_scale != pytest.approx(table[order[:614], 8].std(ddof=1), rel=1e-4)


def test_uci_energy_corrected_split(energy):
    """corrected (today's): RandomState(0) permutation, 614/78/76, training split's mean and population std."""
    root, table, _ = energy
    perm = np.random.RandomState(0).permutation(768)
    assert perm[[0, 614, 692, 767]].tolist() == [661, 461, 324, 684]
    train = table[perm[:614]]
    expected = (table[perm] - train.mean(0)) / train.std(0)
    ds = data.load("uci_energy", root, "corrected")
    for (x, y), rows in zip((ds.train, ds.valid, ds.test), (slice(0, 614), slice(614, 692), slice(692, 768))):
        np.testing.assert_allclose(x.numpy(), expected[rows, :8], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y.numpy(), expected[rows, 8:], rtol=1e-5, atol=1e-5)
    assert ds.target_scale == pytest.approx(train[:, 8].std(), rel=1e-6)


@pytest.mark.parametrize("preprocessing", data.PREPROCESSING)
def test_uci_target_scale_unnormalises_mse(preprocessing, shared_datasets, tmp_path):
    data.prepare("uci_yacht", tmp_path, mirrors=[shared_datasets])
    ds = data.load("uci_yacht", tmp_path, preprocessing)
    prediction = torch.zeros_like(ds.valid[1])
    normalised_mse = ((prediction - ds.valid[1]) ** 2).mean().item()
    unnormalised_mse = ((ds.unnormalise_targets(prediction) - ds.unnormalise_targets(ds.valid[1])) ** 2).mean().item()
    assert unnormalised_mse == pytest.approx(normalised_mse * ds.target_scale**2, rel=1e-4)


def test_paper_row_order_with_duplicate_rows(shared_datasets, tmp_path):
    """Concrete's file names each of its 25 repeated rows by the first occurrence: the rows are still each
    used once, and the paper's test split is data.txt's rows at the file's last 103 indices."""
    table = np.loadtxt(shared_datasets / "uci_concrete" / "data.txt")
    order = np.loadtxt(shared_datasets / "uci_concrete" / "permutation_indices.txt", dtype=np.int64)
    assert len(order) == 1030 and len(set(order.tolist())) == 1005
    data.prepare("uci_concrete", tmp_path, mirrors=[shared_datasets])
    ds = data.load("uci_concrete", tmp_path)
    mean, std = unbiased_stats(table[order[:927]])
    np.testing.assert_allclose(ds.test[0].numpy(), (table[order[927:], :8] - mean[:8]) / std[:8], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda order: order[:-1], "expected 308 row indices in 0..307"),
    (lambda order: np.where(order == 5, 308, order), "expected 308 row indices in 0..307"),
    (lambda order: np.where(order == 5, 6, order), "not a reordering of the 308 rows"),
])
def test_bad_paper_row_order(change, message, shared_datasets, tmp_path):
    mirror = tmp_path / "mirror" / "uci_yacht"
    mirror.mkdir(parents=True)
    (mirror / "data.txt").write_bytes((shared_datasets / "uci_yacht" / "data.txt").read_bytes())
    order = np.loadtxt(shared_datasets / "uci_yacht" / "permutation_indices.txt", dtype=np.int64)
    text = "".join(f"{i}\n" for i in change(order)).encode()
    (mirror / "permutation_indices.txt").write_bytes(text)
    changes = {("uci_yacht", "permutation_indices.txt"): {"sha256": sha256(text)}}
    table = write_sources(tmp_path / "sources.tsv", changes)
    with pytest.raises(DataError, match=message):
        data.prepare("uci_yacht", tmp_path / "d", mirrors=[tmp_path / "mirror"], sources=table)
    assert files_under(tmp_path / "d") == []


def test_unknown_preprocessing(shared_datasets, tmp_path):
    data.prepare("uci_yacht", tmp_path, mirrors=[shared_datasets])
    with pytest.raises(DataError) as err:
        data.load("uci_yacht", tmp_path, "papr")
    assert str(err.value) == "unknown preprocessing 'papr'; known: paper, corrected"


def test_prepared_raw_file_is_reused(shared_datasets, tmp_path):
    data.prepare("uci_yacht", tmp_path, mirrors=[shared_datasets])
    data.prepare("uci_yacht", tmp_path, mirrors=[])  # no mirror needed any more
    assert data.status("uci_yacht", tmp_path) == "prepared"


# ------------------------------------------------------------------------------------------ Fashion-MNIST


def read_idx_gz(path: Path, header: int) -> np.ndarray:
    """The bytes of an IDX .gz file after its ``header`` bytes."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def write_idx_gz(path: Path, array: np.ndarray) -> bytes:
    """Write ``array`` (uint8) as an IDX .gz file; returns the file's bytes."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))
    return path.read_bytes()


@pytest.fixture(scope="module")
def fashion(fashion_mnist_dir, tmp_path_factory):
    """Fashion-MNIST prepared once for the module: (prepared path, paper Dataset, corrected Dataset)."""
    root = tmp_path_factory.mktemp("fashion")
    path = data.prepare("fashion_mnist", root, mirrors=[fashion_mnist_dir])
    return path, data.load("fashion_mnist", root), data.load("fashion_mnist", root, "corrected")


@pytest.fixture(scope="module")
def fashion_raw(fashion_mnist_dir):
    """The official training and test images (uint8, flattened) read here, independently of onepass.data."""
    train = read_idx_gz(fashion_mnist_dir / "train-images-idx3-ubyte.gz", 16).reshape(60_000, 784)
    test = read_idx_gz(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", 16).reshape(10_000, 784)
    labels = read_idx_gz(fashion_mnist_dir / "train-labels-idx1-ubyte.gz", 8)
    return train, test, labels


def test_fashion_mnist_splits(fashion):
    _, *choices = fashion
    for ds in choices:
        assert (ds.task, ds.num_classes, ds.input_shape) == ("classification", 10, (784,))
        for (x, y), size in zip((ds.train, ds.valid, ds.test), (50_000, 10_000, 10_000)):
            assert x.shape == (size, 784) and x.dtype == torch.float32
            assert y.shape == (size,) and y.dtype == torch.int64
        counts = torch.bincount(ds.train[1], minlength=10) + torch.bincount(ds.valid[1], minlength=10)
        assert counts.tolist() == [6000] * 10
        assert torch.bincount(ds.test[1], minlength=10).tolist() == [1000] * 10


def test_fashion_mnist_paper(fashion, fashion_raw):
    """Official order (train = images 0-49,999, valid = 50,000-59,999); each pixel standardised with the mean
    and unbiased std of the raw 0-255 values of all 60,000 training images."""
    _, ds, _ = fashion
    images, test_images, labels = fashion_raw
    raw = images.astype(np.float64)
    mean, std = raw.mean(0), raw.std(0, ddof=1)
    assert std.min() > 0  # no constant pixel in the real files (see the generated files below)
    np.testing.assert_allclose(ds.normalisers["x_mean"].double().numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(ds.normalisers["x_std"].double().numpy(), std, rtol=1e-6)
    for x, image in ((ds.train[0][0], images[0]), (ds.train[0][-1], images[49_999]),
                     (ds.valid[0][0], images[50_000]), (ds.valid[0][-1], images[59_999]),
                     (ds.test[0][0], test_images[0])):
        np.testing.assert_allclose(x.double().numpy(), (image - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(ds.train[1], torch.from_numpy(labels[:50_000].astype(np.int64)))
    assert torch.equal(ds.valid[1], torch.from_numpy(labels[50_000:].astype(np.int64)))
    both = torch.cat([ds.train[0], ds.valid[0]]).double()
    assert both.mean(0).abs().max() < 1e-4 and (both.std(0) - 1).abs().max() < 1e-4


def test_fashion_mnist_corrected(fashion, fashion_raw):
    """corrected (today's): the training images permuted by RandomState(0); one mean/std of [0, 1] pixels."""
    _, _, ds = fashion
    images, test_images, labels = fashion_raw
    perm = np.random.RandomState(0).permutation(60_000)
    train = images[perm[:50_000]] / 255.0
    mean, std = train.mean(), train.std()
    assert ds.normalisers["x_mean"].dim() == 0
    assert ds.normalisers["x_mean"].item() == pytest.approx(mean, rel=1e-6)
    assert ds.normalisers["x_std"].item() == pytest.approx(std, rel=1e-6)
    for x, image in ((ds.train[0][0], images[perm[0]]), (ds.valid[0][0], images[perm[50_000]]),
                     (ds.test[0][0], test_images[0])):
        np.testing.assert_allclose(x.double().numpy(), (image / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(ds.valid[1], torch.from_numpy(labels[perm[50_000:]].astype(np.int64)))
    assert abs(ds.train[0].mean().item()) < 1e-4 and abs(ds.train[0].std().item() - 1) < 1e-4


def test_fashion_mnist_is_deterministic(fashion, fashion_mnist_dir, tmp_path):
    path, *_ = fashion
    assert data.prepare("fashion_mnist", tmp_path, mirrors=[fashion_mnist_dir]).read_bytes() == path.read_bytes()


def test_fashion_mnist_constant_pixel_is_only_centred(tmp_path):
    """Generated IDX files (60 training, 10 test images): pixel 0 is 7 in every training image, so its
    unbiased std is 0; paper then only centres it (std 1): 0 in training, value - 7 in the test images."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 7
    test_images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    contents = {
        "train-images-idx3-ubyte.gz": write_idx_gz(mirror / "train-images-idx3-ubyte.gz", images),
        "train-labels-idx1-ubyte.gz": write_idx_gz(mirror / "train-labels-idx1-ubyte.gz", np.arange(60) % 10),
        "t10k-images-idx3-ubyte.gz": write_idx_gz(mirror / "t10k-images-idx3-ubyte.gz", test_images),
        "t10k-labels-idx1-ubyte.gz": write_idx_gz(mirror / "t10k-labels-idx1-ubyte.gz", np.arange(10)),
    }
    changes = {("fashion_mnist", f): {"sha256": sha256(c)} for f, c in contents.items()}
    table = write_sources(tmp_path / "sources.tsv", changes)
    data.prepare("fashion_mnist", tmp_path / "d", mirrors=[mirror], sources=table)
    ds = data.load("fashion_mnist", tmp_path / "d")
    assert [len(ds.train[0]), len(ds.valid[0]), len(ds.test[0])] == [50, 10, 10]
    raw = images.reshape(60, 784).astype(np.float64)
    mean, std = raw.mean(0), raw.std(0, ddof=1)
    assert std[0] == 0 and ds.normalisers["x_std"][0].item() == 1 and ds.normalisers["x_mean"][0].item() == 7
    std[0] = 1
    np.testing.assert_allclose(ds.train[0].double().numpy(), (raw[:50] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.valid[0].double().numpy(), (raw[50:] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.test[0].double().numpy(), (test_images.reshape(10, 784) - mean) / std,
                               rtol=1e-5, atol=1e-5)
    assert torch.all(ds.train[0][:, 0] == 0) and ds.test[0][:, 0].tolist() == (test_images[:, 0, 0] - 7.0).tolist()
    assert torch.isfinite(ds.train[0]).all()


# ------------------------------------------------------------------------------------------ Penn Treebank


def test_penn_treebank_from_shared_members(shared_datasets, tmp_path):
    """Real valid/test members from ../shared/datasets; a generated training text from a second mirror."""
    valid = (shared_datasets / "penn_treebank_partial" / "ptb.valid.txt").read_bytes()
    test = (shared_datasets / "penn_treebank_partial" / "ptb.test.txt").read_bytes()
    lines = (valid + test).decode().splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    train = "".join(lines).encode()
    (tmp_path / "train_mirror").mkdir()
    (tmp_path / "train_mirror" / "ptb.train.txt").write_bytes(train)
    table = ptb_sources(tmp_path / "sources.tsv", {"train": train})
    mirrors = [shared_datasets, tmp_path / "train_mirror"]
    path = data.prepare("penn_treebank", tmp_path / "a", mirrors=mirrors, sources=table)
    ds = data.load("penn_treebank", tmp_path / "a")
    assert (ds.task, ds.num_classes, ds.input_shape) == ("language_model", None, ())
    counts = Counter(train.decode().split() + ["<eos>"] * len(lines))
    assert ds.vocab_size == len(ds.vocab) == len(counts) <= 10_000
    assert ds.vocab == sorted(counts, key=lambda t: (-counts[t], t))
    for (x, y), text in zip((ds.train, ds.valid, ds.test), (train, valid, test)):
        assert y is None and x.dtype == torch.int64 and x.dim() == 1
        assert len(x) == len(text.split()) + text.count(b"\n")
    corrected = data.load("penn_treebank", tmp_path / "a", "corrected")  # the same text pipeline
    assert corrected.vocab == ds.vocab
    for split in data.SPLITS:
        assert torch.equal(getattr(corrected, split)[0], getattr(ds, split)[0])
    assert len(ds.valid[0]) == 73_760 and len(ds.test[0]) == 82_430  # the standard PTB token counts
    first = valid.decode().splitlines()[0].split() + ["<eos>"]
    assert [ds.vocab[i] for i in ds.valid[0][: len(first)]] == first
    assert (
        data.prepare("penn_treebank", tmp_path / "b", mirrors=mirrors, sources=table).read_bytes() == path.read_bytes()
    )


@pytest.mark.parametrize("where", ["mirror", "mirror/penn_treebank", "download"])
def test_penn_treebank_from_archive(where, tmp_path, http_root):
    """simple-examples.tgz (digest unknown) in a mirror, in a mirror's dataset folder, or downloaded."""
    texts = ptb_texts()
    www, url = http_root
    folder = www if where == "download" else tmp_path / where
    folder.mkdir(parents=True, exist_ok=True)
    make_ptb_archive(folder / "simple-examples.tgz", texts)
    table = ptb_sources(tmp_path / "sources.tsv", texts)
    if where == "download":
        table = write_sources(
            table,
            {
                ("penn_treebank", f"ptb.{s}.txt"): {"url": f"{url}/simple-examples.tgz", "sha256": sha256(t)}
                for s, t in texts.items()
            },
        )
    mirrors = [tmp_path / "mirror"] if where != "download" else []
    data.prepare("penn_treebank", tmp_path / "d", mirrors=mirrors, sources=table)
    for s, text in texts.items():
        assert (tmp_path / "d" / "penn_treebank" / f"ptb.{s}.txt").read_bytes() == text
    assert (tmp_path / "d" / "penn_treebank" / "simple-examples.tgz").exists() == (where == "download")
    ds = data.load("penn_treebank", tmp_path / "d")
    unk = ds.vocab.index("<unk>")
    assert ds.valid[0][-3].item() == unk and ds.vocab[ds.valid[0][-1]] == "<eos>"  # "neverseen the <eos>"
    counts = Counter(texts["train"].decode().split() + ["<eos>"] * texts["train"].count(b"\n"))
    assert ds.vocab == sorted(counts, key=lambda t: (-counts[t], t))


UNSAFE_MEMBERS = {
    "absolute path": lambda: tarfile.TarInfo("/tmp/onepass-evil.txt"),
    "dot-dot": lambda: tarfile.TarInfo("simple-examples/../../evil.txt"),
    "symlink out": lambda: _link(tarfile.SYMTYPE, "simple-examples/data/evil", "../../../etc/passwd"),
    "absolute symlink": lambda: _link(tarfile.SYMTYPE, "simple-examples/data/evil", "/etc/passwd"),
    "hard link out": lambda: _link(tarfile.LNKTYPE, "simple-examples/data/evil", "../outside"),
    "device": lambda: _link(tarfile.CHRTYPE, "simple-examples/data/evil", ""),
}


def _link(kind, name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("kind", sorted(UNSAFE_MEMBERS))
def test_unsafe_archive_member_is_rejected(kind, tmp_path):
    texts = ptb_texts()
    bad = UNSAFE_MEMBERS[kind]()
    (tmp_path / "mirror").mkdir()
    make_ptb_archive(tmp_path / "mirror" / "simple-examples.tgz", texts, [bad])
    table = ptb_sources(tmp_path / "sources.tsv", texts)
    with pytest.raises(DataError, match="unsafe member") as err:
        data.prepare("penn_treebank", tmp_path / "d", mirrors=[tmp_path / "mirror"], sources=table)
    assert bad.name in str(err.value)
    assert files_under(tmp_path / "d") == []
    assert not Path("/tmp/onepass-evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_truncated_archive_is_rejected(tmp_path):
    texts = ptb_texts()
    (tmp_path / "mirror").mkdir()
    archive = make_ptb_archive(tmp_path / "mirror" / "simple-examples.tgz", texts)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    table = ptb_sources(tmp_path / "sources.tsv", texts)
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.prepare("penn_treebank", tmp_path / "d", mirrors=[tmp_path / "mirror"], sources=table)
    assert files_under(tmp_path / "d") == []


def test_bad_member_removes_files_of_the_same_run(shared_datasets, tmp_path):
    """A corrupted test member after a good valid member: no raw file of the run stays behind."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ptb.test.txt").write_bytes(
        (shared_datasets / "penn_treebank_partial" / "ptb.test.txt").read_bytes()[:-10]
    )
    (mirror / "ptb.train.txt").write_bytes(b" a b \n")
    table = ptb_sources(tmp_path / "sources.tsv", {"train": b" a b \n"})
    with pytest.raises(DataError, match="SHA-256 mismatch for penn_treebank/ptb.test.txt"):
        data.prepare("penn_treebank", tmp_path / "d", mirrors=[mirror, shared_datasets], sources=table)
    assert files_under(tmp_path / "d") == []


# ---------------------------------------------------------------------------------------------- CIFAR-10


def cifar_batches(archive: Path) -> list[dict]:
    """The six batches of a CIFAR-10 archive (data_batch_1..5, test_batch), read here."""
    with tarfile.open(archive) as tar:
        return [
            pickle.loads(tar.extractfile(f"cifar-10-batches-py/{m}").read(), encoding="bytes")
            for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        ]


@pytest.fixture
def cifar(tmp_path):
    """A generated archive (5 x 20 training images, 20 test images) prepared: (data dir, official training
    images (100, 3, 32, 32), their labels, test images, test labels, prepared path, mirror, sources)."""
    mirror, table, _ = cifar_setup(tmp_path)
    path = data.prepare("cifar10", tmp_path / "a", mirrors=[mirror], sources=table)
    batches = cifar_batches(mirror / "cifar-10-python.tar.gz")
    images = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(100, 3, 32, 32)
    labels = np.concatenate([b[b"labels"] for b in batches[:5]])
    test = batches[5][b"data"].reshape(20, 3, 32, 32)
    return tmp_path / "a", images, labels, test, np.array(batches[5][b"labels"]), path, mirror, table


def test_cifar10_paper(cifar):
    """Official order, the last 10% validate; the fixed constants applied to raw 0-255 pixels."""
    root, images, labels, test, test_labels, *_ = cifar
    ds = data.load("cifar10", root)
    assert (ds.task, ds.num_classes, ds.input_shape) == ("classification", 10, (3, 32, 32))
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
    std = np.array([0.247, 0.243, 0.261]).reshape(3, 1, 1)
    for (x, y), rows, labs in zip((ds.train, ds.valid, ds.test), (images[:90], images[90:], test),
                                  (labels[:90], labels[90:], test_labels)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_allclose(x.double().numpy(), (rows - mean) / std, rtol=1e-5)
        assert y.tolist() == labs.tolist()
    assert ds.valid[0].max() > 900  # raw pixels: far outside a standardised range
    torch.testing.assert_close(ds.normalisers["x_mean"], torch.tensor([0.4914, 0.4822, 0.4465]))
    torch.testing.assert_close(ds.normalisers["x_std"], torch.tensor([0.247, 0.243, 0.261]))


def test_cifar10_corrected(cifar):
    """corrected (today's): RandomState(0) permutation, 90/10/20; pixels scaled to [0, 1] and standardised
    per channel with the training split's statistics."""
    root, images, labels, test, test_labels, path, mirror, table = cifar
    ds = data.load("cifar10", root, "corrected")
    perm = np.random.RandomState(0).permutation(100)
    train = images[perm[:90]] / 255.0
    mean, std = train.mean((0, 2, 3)).reshape(3, 1, 1), train.std((0, 2, 3)).reshape(3, 1, 1)
    for (x, y), rows, labs in zip((ds.train, ds.valid, ds.test), (images[perm[:90]], images[perm[90:]], test),
                                  (labels[perm[:90]], labels[perm[90:]], test_labels)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_allclose(x.double().numpy(), (rows / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
        assert y.tolist() == labs.tolist()
    assert_standardised(ds.train[0].transpose(0, 1).reshape(3, -1), dims=1)
    assert torch.all((ds.normalisers["x_mean"] > 0.4) & (ds.normalisers["x_mean"] < 0.6))
    np.testing.assert_allclose(ds.normalisers["x_std"].numpy(), std.ravel(), rtol=1e-6)
    assert data.prepare("cifar10", root.parent / "b", mirrors=[mirror], sources=table).read_bytes() == path.read_bytes()


def test_cifar10_checksum_mismatch_of_truncated_archive(tmp_path):
    good = make_cifar_archive(tmp_path / "good.tar.gz").read_bytes()
    mirror, table, _ = cifar_setup(tmp_path, archive_bytes=good[: len(good) // 2], table_sha=sha256(good))
    with pytest.raises(DataError, match=f"expected {sha256(good)}, got {sha256(good[: len(good) // 2])}"):
        data.prepare("cifar10", tmp_path / "d", mirrors=[mirror], sources=table)
    assert files_under(tmp_path / "d") == []


def test_cifar10_truncated_archive_with_matching_digest(tmp_path):
    good = make_cifar_archive(tmp_path / "good.tar.gz").read_bytes()
    cut = good[: len(good) * 2 // 3]
    mirror, table, _ = cifar_setup(tmp_path, archive_bytes=cut, table_sha=sha256(cut))
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.prepare("cifar10", tmp_path / "d", mirrors=[mirror], sources=table)
    assert files_under(tmp_path / "d") == []  # the verified raw archive of this run is removed too


def test_cifar10_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    archive = make_cifar_archive(tmp_path / "evil.tar.gz", test_batch=evil).read_bytes()
    mirror, table, _ = cifar_setup(tmp_path, archive_bytes=archive, table_sha=sha256(archive))
    with pytest.raises(DataError, match="refusing to load .*print"):
        data.prepare("cifar10", tmp_path / "d", mirrors=[mirror], sources=table)


# ---------------------------------------------------------------------------------------- errors, CLI


def corrupted_mirror(shared_datasets: Path, tmp_path: Path, name: str = "uci_energy") -> Path:
    mirror = tmp_path / "mirror"
    (mirror / name).mkdir(parents=True)
    content = bytearray((shared_datasets / name / "data.txt").read_bytes())
    content[10] ^= 1
    (mirror / name / "data.txt").write_bytes(bytes(content))
    return mirror


def test_checksum_mismatch_leaves_nothing(shared_datasets, tmp_path):
    mirror = corrupted_mirror(shared_datasets, tmp_path)
    actual = data.sha256_file(mirror / "uci_energy" / "data.txt")
    expected = data.read_sources()["uci_energy"][0].sha256
    with pytest.raises(DataError) as err:
        data.prepare("uci_energy", tmp_path / "d", mirrors=[mirror, shared_datasets])
    message = str(err.value)
    assert "SHA-256 mismatch for uci_energy/data.txt" in message and expected in message and actual in message
    assert not (tmp_path / "d").exists() or files_under(tmp_path / "d") == []


def test_missing_mirror(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match=f"mirror directory does not exist: {missing}"):
        data.prepare("uci_yacht", tmp_path / "d", mirrors=[missing])
    monkeypatch.setenv(data.MIRRORS_ENV, f"{tmp_path}:{missing}")
    with pytest.raises(DataError, match=f"does not exist: {missing} \\(from {data.MIRRORS_ENV}\\)"):
        data.prepare("uci_yacht", tmp_path / "d")
    assert files_under(tmp_path / "d") == []


def test_mirrors_from_environment(shared_datasets, tmp_path, monkeypatch):
    monkeypatch.setenv(data.MIRRORS_ENV, f"{tmp_path}:{shared_datasets}")
    assert data.resolve_mirrors() == [tmp_path, shared_datasets]
    assert data.fetch("uci_yacht", tmp_path / "d") == {
        name: tmp_path / "d" / "uci_yacht" / name for name in ("data.txt", "permutation_indices.txt")}


def test_download_with_progress(shared_datasets, tmp_path, http_root):
    www, url = http_root
    files = ("data.txt", "permutation_indices.txt")
    for name in files:
        (www / name).write_bytes((shared_datasets / "uci_yacht" / name).read_bytes())
    table = write_sources(tmp_path / "sources.tsv", {("uci_yacht", name): {"url": f"{url}/{name}"} for name in files})
    data.prepare("uci_yacht", tmp_path / "d", mirrors=[], sources=table)
    assert data.status("uci_yacht", tmp_path / "d") == "prepared"


def test_failed_download_names_file_and_mirrors(tmp_path, http_root):
    _, url = http_root
    table = write_sources(tmp_path / "sources.tsv", {("uci_yacht", "data.txt"): {"url": f"{url}/missing.txt"}})
    with pytest.raises(DataError) as err:
        data.prepare("uci_yacht", tmp_path / "d", mirrors=[tmp_path], sources=table)
    message = str(err.value)
    assert "cannot obtain uci_yacht/data.txt" in message and str(tmp_path) in message and "download" in message
    with pytest.raises(DataError, match="downloads are disabled"):
        data.prepare("uci_yacht", tmp_path / "d", mirrors=[], sources=table, download=False)
    assert files_under(tmp_path / "d") == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'; known datasets: cifar10.*uci_yacht"):
        data.prepare("mnist", tmp_path)
    with pytest.raises(DataError, match="known datasets"):
        data.load("mnist", tmp_path)


def test_format_version_mismatch(shared_datasets, tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        data.load("uci_yacht", tmp_path)
    path = data.prepare("uci_yacht", tmp_path, mirrors=[shared_datasets])
    content = torch.load(path, weights_only=True)
    content["format_version"] = data.FORMAT_VERSION - 1
    torch.save(content, path)
    old = data.FORMAT_VERSION - 1
    with pytest.raises(DataError, match=f"format version {old} .*re-run `python -m onepass.data prepare uci_yacht"):
        data.load("uci_yacht", tmp_path)
    assert data.status("uci_yacht", tmp_path).startswith("stale")


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "onepass.data", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_prepare_and_list(shared_datasets, tmp_path, repo_root):
    result = run_cli(
        "prepare", "uci_yacht", "--mirror", str(shared_datasets), "--data-dir", str(tmp_path), cwd=repo_root
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "uci_yacht" / "prepared.pt")
    listing = run_cli("list", "--data-dir", str(tmp_path), cwd=repo_root)
    assert listing.returncode == 0
    assert "uci_yacht\tuci\tprepared" in listing.stdout and "cifar10\tcifar10\tnot prepared" in listing.stdout


def test_cli_errors_are_one_line(shared_datasets, tmp_path, repo_root, capsys):
    mirror = corrupted_mirror(shared_datasets, tmp_path)
    result = run_cli("prepare", "uci_energy", "--mirror", str(mirror), "--data-dir", str(tmp_path / "d"), cwd=repo_root)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: SHA-256 mismatch for uci_energy/data.txt")
    assert files_under(tmp_path / "d") == []
    for argv in (
        ["prepare", "nope", "--data-dir", str(tmp_path)],
        ["prepare", "uci_yacht", "--mirror", "/nonexistent", "--data-dir", str(tmp_path)],
    ):
        assert data.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
