"""OnePassSGD on a CUDA GPU: float16 autocast with GradScaler trains with float32 hyperparameters, and a
float32 run equals the CPU run of the same seed and batches to round-off. Marked ``cuda`` and skipped
without a GPU (run with ``python -m pytest -m cuda``)."""

import pytest
import torch
from test_optim_loops import train_with_autocast

from onepass import OnePassSGD
from onepass.models import MLP

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def data(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    return x.to(device), (x @ torch.randn(8, 1, generator=g)).tanh().to(device)


def run(device, steps: int = 40, amp: bool = False):
    """Ours (WD+LR+M), T 5, on ``device``: (model, optimiser, validation loss before, after)."""
    x, y = data(device)
    torch.manual_seed(0)
    model = MLP(8, 16, 1).to(device)
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-3, momentum=0.5, model=model, update_interval=5)
    first, last = train_with_autocast(model, opt, x, y, steps, device, torch.float16, enabled=amp)
    return model, opt, first, last


def test_float16_autocast_with_grad_scaler_on_cuda():
    model, opt, first, last = run("cuda", 60, amp=True)
    assert all(torch.isfinite(p).all() for p in model.parameters()) and last < 0.7 * first
    assert all(g.dtype == torch.float32 and g.is_cuda for g in opt.last_hypergradient[0].values())
    assert opt.hyperparameters[0]["lr"] != pytest.approx(0.05, rel=1e-3)


def test_cuda_run_equals_the_cpu_run():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False     # IEEE float32, so that the runs differ by round-off
    try:
        gpu, opt_gpu, _, _ = run("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    cpu, opt_cpu, _, _ = run("cpu")
    for a, b in zip(gpu.parameters(), cpu.parameters()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    for name in ("lr", "weight_decay", "momentum"):
        assert opt_gpu.hyperparameters[0][name] == pytest.approx(opt_cpu.hyperparameters[0][name], rel=1e-4)
