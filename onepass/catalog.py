"""The catalogue of algorithms and datasets: each is described once, in its own YAML file.

``config/algorithms/<name>.yaml`` holds an algorithm's label, style (colour, line style), rank in the
paper's tables, whether it is a black-box search, and its run settings (``settings``, adapted per dataset
family by ``by_family``). A *derived* algorithm (Random (3-batched)) has no settings: it names the
algorithm whose runs it is computed from. ``config/datasets/<name>.yaml`` holds a dataset's label,
family, task, table metric, how its raw files are cut into splits (``data``) and its run settings.
The raw files themselves are listed in ``config/sources.tsv``. A dataset with ``same_as: <dataset>`` is a
variant for a study of its own (the paper's appendix: Fashion-MNIST with BatchNorm, the short-horizon
comparisons of Long Diff-through-Opt): the same data and initialisations as its base, every key it does not
give taken from the base, its ``settings`` laid over the base's. Variants are not rows of the paper's
Tables 1 and 2.

A dataset of one's own (family ``user``) names a user's Python functions, ``module:function``: ``data``
returns its train, validation and test splits, ``model`` its network (see :mod:`onepass.user`); ``path``
(relative to the YAML file) is the directory its modules are imported from. Catalogue files outside the
project live in extra directories, each with ``datasets/`` and/or ``algorithms/``: ``$ONEPASS_CATALOG``
(``:``-separated; a study config's ``catalog`` key sets it, see :func:`add_directories`).

Everything that shows or routes algorithms and datasets (tables, figures, the data layer, the
workflow) reads these files through this module; nothing repeats them.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ALGORITHM_KEYS = {"label", "style", "rank", "search", "settings", "by_family", "derived", "paper_table"}
# Where the paper's tables show an algorithm besides its dataset's section (onepass.tables): "base", also when
# run on a variant of the dataset (Long Diff-through-Opt (Full) in UCI Energy's); "separate", a table of its
# own with the dataset's other rows (Long Diff-through-Opt (Medium) with Fashion-MNIST's)
PAPER_TABLES = ("base", "separate")
# a variant dataset's place in the paper's tables: beside its base's rows, or none (a table or figure of its own)
DATASET_TABLES = ("with_base", "own")
DATASET_KEYS = {"label", "family", "task", "metric", "table_scale", "data", "shape", "settings", "same_as",
                "paper_table", "model", "path"}
SEARCH_KINDS = ("none", "bayesopt", "asha", "pbt")
# A derived algorithm's groups: random groups of the finished runs (the paper's), or consecutive seeds
DERIVED_KEYS = {"from", "best_of", "groups", "seed"}
DERIVED_GROUPS = ("random", "by_seed")
TASKS = ("regression", "classification", "language_model")
FAMILIES = ("uci", "fashion_mnist", "penn_treebank", "cifar10", "user")
USER_TASKS = ("regression", "classification")
FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # module:function
CATALOG_ENV = "ONEPASS_CATALOG"  # extra catalogue directories, ':'-separated


class CatalogError(ValueError):
    """An algorithm or dataset file is missing, not valid YAML, or has an unknown or wrong key."""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm, as its YAML file describes it."""

    name: str
    label: str
    colour: str
    linestyle: str
    rank: int
    search: str = "none"
    settings: dict = field(default_factory=dict)
    by_family: dict = field(default_factory=dict)
    # {"from": algorithm, "best_of": n, "groups": random | by_seed, "seed": s}: computed from another's runs
    derived: dict | None = None
    paper_table: str | None = None  # PAPER_TABLES, or None: its dataset's section of the paper's tables

    @property
    def is_search(self) -> bool:
        """Whether it is a black-box search run by ``python -m onepass.search``."""
        return self.search != "none"

    @property
    def is_derived(self) -> bool:
        """Whether it is computed from another algorithm's runs rather than trained."""
        return self.derived is not None


@dataclass(frozen=True)
class Dataset:
    """One dataset, as its YAML file describes it."""

    name: str
    label: str
    family: str
    task: str
    metric: str
    data: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)  # features per example, outputs (for estimates of job sizes)
    settings: dict = field(default_factory=dict)
    base: str = ""  # the dataset whose data and initialisations it uses: itself, or its ``same_as``
    table_scale: float = 1.0  # the paper's tables show the metric times this (Kin8nm's MSE x 1000)
    paper_table: str | None = None  # a variant: "with_base", a table beside its base's rows (Fashion-MNIST + BN)
    function: str | None = None  # a user dataset: ``module:function`` returning its splits (YAML key ``data``)
    path: str | None = None  # a user dataset: the directory its modules are imported from (absolute)
    file: str = ""  # the YAML file it was read from

    @property
    def is_user(self) -> bool:
        """Whether it is a dataset of one's own, its data and model from a user's functions."""
        return self.function is not None

    @property
    def is_variant(self) -> bool:
        """Whether it is a variant of another dataset (``same_as``)."""
        return self.base != self.name


def config_dir() -> Path:
    """The ``config/`` directory: ``$ONEPASS_CONFIG_DIR`` or the one beside the package."""
    env = os.environ.get("ONEPASS_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "config"


ADDED: list[str] = []  # catalogue directories this process added (a study config's `catalog` key)


def extra_directories() -> list[Path]:
    """The extra catalogue directories: those added in this process (:func:`add_directories`), then those of
    ``$ONEPASS_CATALOG`` (each may hold datasets/ and algorithms/)."""
    from_env = [d for d in os.environ.get(CATALOG_ENV, "").split(":") if d]
    return [Path(d) for d in dict.fromkeys([*ADDED, *from_env])]


def add_directories(directories) -> None:
    """Add catalogue directories (made absolute) for this process; the commands it starts see them through
    ``$ONEPASS_CATALOG`` set to :func:`catalog_variable` (the workflow exports it for its jobs). A
    CatalogError names a directory that does not exist."""
    given = []
    for d in directories:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise CatalogError(f"catalogue directory {d} does not exist")
        given.append(str(path))
    ADDED[:0] = [d for d in dict.fromkeys(given) if d not in ADDED]


def catalog_variable() -> str:
    """The value of ``$ONEPASS_CATALOG`` that gives a command this process's extra catalogue directories."""
    return ":".join(str(d) for d in extra_directories())


def read_yaml(path: Path) -> dict:
    """A YAML mapping, or a :class:`CatalogError` naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise CatalogError(f"{path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping")
    return data


def _require(path: Path, data: dict, key: str, kind=str):
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CatalogError(f"{path}: key '{key}' is required and must be a {kind.__name__}")
    return value


def _mapping(path: Path, data: dict, key: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise CatalogError(f"{path}: key '{key}' must be a mapping")
    return value


def _algorithm(path: Path) -> Algorithm:
    data = read_yaml(path)
    unknown = sorted(set(data) - ALGORITHM_KEYS)
    if unknown:
        raise CatalogError(f"{path}: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(ALGORITHM_KEYS))}")
    style = _mapping(path, data, "style")
    colour, linestyle = style.get("colour"), style.get("linestyle", "-")
    if not isinstance(colour, str) or not colour.startswith("#") or len(colour) != 7:
        raise CatalogError(f"{path}: key 'style.colour' must be a colour like '#1f77b4'")
    if linestyle not in ("-", "--", ":", "-."):
        raise CatalogError(f"{path}: key 'style.linestyle' must be one of -, --, :, -.")
    search = data.get("search", "none")
    if search not in SEARCH_KINDS:
        raise CatalogError(f"{path}: key 'search' must be one of {', '.join(SEARCH_KINDS)}, got {search!r}")
    derived = data.get("derived")
    if derived is not None:
        if (not isinstance(derived, dict) or not {"from", "best_of"} <= set(derived) <= DERIVED_KEYS
                or not isinstance(derived["best_of"], int) or derived["best_of"] < 1
                or derived.get("groups", "random") not in DERIVED_GROUPS
                or not isinstance(derived.get("seed", 0), int)):
            raise CatalogError(f"{path}: key 'derived' must be {{from: ALGORITHM, best_of: N[, groups: "
                               f"{' or '.join(DERIVED_GROUPS)}][, seed: INT]}}")
        if data.get("settings") or data.get("by_family") or search != "none":
            raise CatalogError(f"{path}: a derived algorithm has no settings, by_family or search")
    paper_table = data.get("paper_table")
    if paper_table is not None and paper_table not in PAPER_TABLES:
        raise CatalogError(f"{path}: key 'paper_table' must be one of {', '.join(PAPER_TABLES)}, got {paper_table!r}")
    by_family = _mapping(path, data, "by_family")
    for family in by_family:
        if family not in FAMILIES:
            raise CatalogError(f"{path}: key 'by_family.{family}': unknown family; known: {', '.join(FAMILIES)}")
    return Algorithm(name=path.stem, label=_require(path, data, "label"), colour=colour.lower(),
                     linestyle=linestyle, rank=_require(path, data, "rank", int), search=search,
                     settings=_mapping(path, data, "settings"), by_family=by_family, derived=derived,
                     paper_table=paper_table)


def _dataset(path: Path) -> Dataset:
    data = read_yaml(path)
    unknown = sorted(set(data) - DATASET_KEYS)
    if unknown:
        raise CatalogError(f"{path}: unknown key '{unknown[0]}'; known keys: {', '.join(sorted(DATASET_KEYS))}")
    base = data.get("same_as")
    if base is not None:
        base_path = path.with_name(f"{base}.yaml")
        if not base_path.exists() or "same_as" in read_yaml(base_path):
            raise CatalogError(f"{path}: key 'same_as' must name a dataset that is not itself a variant, got {base!r}")
        inherited = read_yaml(base_path)
        data = {**inherited, **data, "settings": {**(inherited.get("settings") or {}), **(data.get("settings") or {})}}
    function, root, settings = _user_keys(path, data)
    family = "user" if function else _require(path, data, "family")
    task = _require(path, data, "task")
    if family not in FAMILIES:
        raise CatalogError(f"{path}: key 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
    if task not in (USER_TASKS if function else TASKS):
        raise CatalogError(f"{path}: key 'task' must be one of "
                           f"{', '.join(USER_TASKS if function else TASKS)}, got {task!r}")
    return Dataset(name=path.stem, label=_require(path, data, "label"), family=family, task=task,
                   metric=_require(path, data, "metric"), data={} if function else _mapping(path, data, "data"),
                   shape=_mapping(path, data, "shape"), settings=settings,
                   base=base or path.stem, table_scale=_scale(path, data), function=function, path=root,
                   file=str(path), paper_table=_dataset_table(path, data))


def _user_keys(path: Path, data: dict) -> tuple:
    """A user dataset's (data function, module directory, settings with ``model``), or (None, None, settings)
    for a dataset of the paper's families (which take neither ``model`` nor ``path``)."""
    settings = _mapping(path, data, "settings")
    spec = data.get("data")
    if not isinstance(spec, str):
        for key in ("model", "path"):
            if key in data:
                raise CatalogError(f"{path}: key '{key}' is for a dataset whose 'data' names a function "
                                   f"(module:function)")
        return None, None, settings
    for key, value in (("data", spec), ("model", data.get("model", "mlp"))):
        if not isinstance(value, str) or not (FUNCTION.match(value) or (key == "model" and ":" not in value)):
            raise CatalogError(f"{path}: key '{key}' must name a function as module:function, got {value!r}")
    if data.get("family", "user") != "user":
        raise CatalogError(f"{path}: key 'family' must be user (or absent) for a dataset whose 'data' names a "
                           f"function, got {data['family']!r}")
    if "model" in settings:
        raise CatalogError(f"{path}: key 'settings.model': give the model as the top-level key 'model'")
    root = data.get("path", ".")
    if not isinstance(root, str):
        raise CatalogError(f"{path}: key 'path' must be a directory (relative to the YAML file), got {root!r}")
    settings = {**settings, "model": data.get("model", "mlp")}
    return spec, str((path.parent / root).resolve()), settings


def _dataset_table(path: Path, data: dict) -> str | None:
    value = data.get("paper_table")
    if value not in (None, *DATASET_TABLES):
        raise CatalogError(f"{path}: key 'paper_table' must be one of {', '.join(DATASET_TABLES)}, got {value!r}")
    return value


def _scale(path: Path, data: dict) -> float:
    scale = data.get("table_scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise CatalogError(f"{path}: key 'table_scale' must be a positive number, got {scale!r}")
    return float(scale)


@functools.cache
def _read_all(directories: tuple, kind: str) -> dict:
    reader = _algorithm if kind == "algorithms" else _dataset
    entries, files = {}, {}
    for directory in directories:
        for p in sorted((directory / kind).glob("*.yaml")):
            if p.stem in entries:
                raise CatalogError(f"{p}: {kind[:-1]} {p.stem!r} is already defined by {files[p.stem]}")
            entries[p.stem], files[p.stem] = reader(p), p
    if kind == "algorithms":
        for a in entries.values():
            if a.is_derived and (a.derived["from"] not in entries or entries[a.derived["from"]].is_derived):
                raise CatalogError(f"{files[a.name]}: key 'derived.from' must name a "
                                   f"trained algorithm, got {a.derived['from']!r}")
    return entries


def _directories(directory) -> tuple:
    """The catalogue directories read: ``directory`` alone, or config/ and the extra ones."""
    return (Path(directory),) if directory else (config_dir(), *extra_directories())


def algorithms(directory: Path | None = None) -> dict[str, Algorithm]:
    """Every algorithm of ``config/algorithms`` (and the extra directories' ``algorithms/``), by name."""
    return _read_all(_directories(directory), "algorithms")


def datasets(directory: Path | None = None) -> dict[str, Dataset]:
    """Every dataset of ``config/datasets`` (and the extra directories' ``datasets/``), by name."""
    return _read_all(_directories(directory), "datasets")


def algorithm(name: str, directory: Path | None = None) -> Algorithm:
    """The algorithm ``name``, or a :class:`CatalogError` listing the known ones."""
    table = algorithms(directory)
    if name not in table:
        raise CatalogError(f"unknown algorithm {name!r}; known: {', '.join(table)}")
    return table[name]


def dataset(name: str, directory: Path | None = None) -> Dataset:
    """The dataset ``name``, or a :class:`CatalogError` listing the known ones."""
    table = datasets(directory)
    if name not in table:
        raise CatalogError(f"unknown dataset {name!r}; known: {', '.join(table)}")
    return table[name]


# ---- display helpers: unknown names (say, runs of an algorithm since removed) still display --------------
def label(name: str) -> str:
    """Table/figure label of an algorithm (its name if unknown)."""
    a = algorithms().get(name)
    return a.label if a else name


def colour(name: str) -> str:
    """Colour of an algorithm (black if unknown)."""
    a = algorithms().get(name)
    return a.colour if a else "#000000"


def linestyle(name: str) -> str:
    """Line style of an algorithm (solid if unknown)."""
    a = algorithms().get(name)
    return a.linestyle if a else "-"


def order(names) -> list:
    """Algorithms sorted by their rank in the paper's tables; unknown ones last, by name."""
    table = algorithms()
    return sorted(names, key=lambda n: (table[n].rank if n in table else 10 ** 9, n))


def is_search(name: str) -> bool:
    """Whether an algorithm is a black-box search (unknown names are not)."""
    a = algorithms().get(name)
    return bool(a and a.is_search)


def derived_algorithms() -> dict[str, Algorithm]:
    """The derived algorithms (computed from another's runs), by name."""
    return {n: a for n, a in algorithms().items() if a.is_derived}


def dataset_label(name: str) -> str:
    """Human-readable dataset name (the name itself if unknown)."""
    d = datasets().get(name)
    return d.label if d else name


def family(name: str) -> str:
    """A dataset's family: uci | fashion_mnist | penn_treebank | cifar10."""
    return dataset(name).family


def table_scale(name: str) -> float:
    """The factor a dataset's metric is shown with in the paper's tables (1 if unknown)."""
    d = datasets().get(name)
    return d.table_scale if d else 1.0


def metric_name(name: str) -> str:
    """Name of a dataset's table metric ('test loss' if unknown)."""
    d = datasets().get(name)
    return d.metric if d else "test loss"


def dataset_order(names) -> list:
    """Datasets in the paper's order: by family (UCI, Fashion-MNIST, Penn Treebank, CIFAR-10), then name."""
    table = datasets()
    return sorted(names, key=lambda n: (FAMILIES.index(table[n].family) if n in table else len(FAMILIES), n))
