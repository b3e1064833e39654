"""The GPUs a process can use, counted without importing torch (so that the Snakemake process of a cluster
job, which decides its job's device, stays small)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
NONE_VISIBLE = ("", "-1", "NoDevFiles")


def driver_gpus() -> int:
    """NVIDIA GPUs the driver has: its /proc entries, else ``nvidia-smi -L`` (a container without them), else 0."""
    if DRIVER_GPUS.is_dir():
        return len(list(DRIVER_GPUS.iterdir()))
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        if listed.returncode == 0:
            return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    return 0


def visible_gpus(in_job: bool = False, environ=None) -> int:
    """GPUs this process may use: the driver's, limited by ``CUDA_VISIBLE_DEVICES``. Inside a scheduler's job
    (``in_job``) the devices it made visible count as they are: SLURM sets ``CUDA_VISIBLE_DEVICES`` to the
    job's GPUs."""
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return driver_gpus()
    ids = [d for d in visible.split(",") if d.strip() not in NONE_VISIBLE]
    return len(ids) if in_job else min(driver_gpus(), len(ids))
