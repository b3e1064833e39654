"""A study as the workflow plans it, resolved once from the checked config: its datasets, algorithms,
seeds, packing (onepass.packing, read from and written to results/<study>/packing/), device, appendix parts
and every training job. The Snakefile makes one with :func:`resolve` and its rules read it; nothing reads
the config's chunks or device anywhere else, and the config itself is never changed."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from types import MappingProxyType

from . import appendix, jobs, packing, study


@dataclass(frozen=True)
class PlannedStudy:
    """What a study runs (immutable). ``config``: the checked config with ``device`` resolved; ``chunks``:
    {(dataset, algorithm): ((seed, ...), ...)}; ``sensitivity_cells``: ((algorithm, cell), ...)."""

    config: MappingProxyType
    device: str
    datasets: tuple
    algorithms: MappingProxyType
    chunks: MappingProxyType
    sensitivity_cells: tuple
    appendix_parts: tuple

    def jobs(self) -> list[tuple[str, str, tuple]]:
        """Every training job of the study: (dataset, algorithm, chunk of seeds)."""
        return [(d, a, chunk) for d in self.datasets for a in self.algorithms[d] for chunk in self.chunks[d, a]]


def resolve(config: dict, gpus_offered: int, sources=None, planner: bool = True) -> PlannedStudy:
    """The planned study of a checked config (onepass.study.validate): the device from ``gpus_offered``
    (onepass.jobs.resolve_device; strict only where this process plans the study), and every dataset's
    packing, written where this process is the ``planner`` (a cluster job only reads it)."""
    device = jobs.resolve_device(config, gpus_offered, sources, strict=planner)
    resolved = {**copy.deepcopy(config), "device": device}
    datasets = tuple(resolved["datasets"])
    algorithms = {d: tuple(study.algorithms(resolved, d)) for d in datasets}
    chunks = {}
    for dataset in datasets:
        content = packing.resolve(resolved, dataset, save=planner)
        for algorithm in algorithms[dataset]:
            chunks[dataset, algorithm] = tuple(tuple(c) for c in content["chunks"][algorithm])
    parts = tuple(p for p in (appendix.SENSITIVITY, appendix.QUALITY) if appendix.enabled(resolved, p))
    cells = tuple(appendix.sensitivity_cells(resolved)) if appendix.SENSITIVITY in parts else ()
    return PlannedStudy(MappingProxyType(resolved), device, datasets, MappingProxyType(algorithms),
                        MappingProxyType(chunks), cells, parts)
