"""OnePassSGD in the loops people already have: a torch.optim.lr_scheduler scheduler (a multiplier on the
tuned lr), torch.amp autocast with GradScaler, float64 models, a model of two inputs and one of a dict batch,
and a 2-process DistributedDataParallel run on the CPU whose ranks reach the same hyperparameters."""

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from onepass import OnePassSGD
from onepass.models import MLP


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def data(seed: int = 0, n: int = 96, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g, dtype=dtype)
    return x, (x @ torch.randn(8, 1, generator=g, dtype=dtype)).tanh()


def train(model, opt, x, y, steps: int, loss_of=None, scheduler=None):
    """``steps`` weight steps on batches of 16 of (x[:64], y[:64]), validated on the rest: the backward
    loop, and the closures where the step needs them."""
    loss_of = loss_of or (lambda i: F.mse_loss(model(x[i]), y[i]))
    for step in range(steps):
        i = slice(step % 4 * 16, step % 4 * 16 + 16)
        if getattr(opt, "needs_closure", False):
            opt.step(lambda: loss_of(i), val_closure=lambda: loss_of(slice(64, None)))
        else:
            opt.zero_grad()
            loss_of(i).backward()
            opt.step()
        if scheduler is not None:
            scheduler.step()
    return loss_of(slice(64, None)).item()


def test_a_scheduler_takes_it_and_scales_fixed_hyperparameters_as_sgds():
    """StepLR accepts OnePassSGD; with nothing tuned (Random) the run is SGD's under the same StepLR."""
    x, y = data()
    torch.manual_seed(0)
    ours, ref = MLP(8, 6, 1), MLP(8, 6, 1)
    ref.load_state_dict(ours.state_dict())
    opt = OnePassSGD(ours.parameters(), lr=0.1, momentum=0.5, algorithm="Random")
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
    train(ours, opt, x, y, 30, scheduler=torch.optim.lr_scheduler.StepLR(opt, 10, gamma=0.3))
    train(ref, sgd, x, y, 30, scheduler=torch.optim.lr_scheduler.StepLR(sgd, 10, gamma=0.3))
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [step[0][0] for step in opt.trace[9:12]] == pytest.approx([0.1, 0.03, 0.03], rel=1e-6)


def test_a_scheduler_multiplies_the_tuned_lr():
    """A step uses the tuned lr times group['lr'] / group['initial_lr']: lr 0.05 under a constant LambdaLR
    factor 0.5 is the run of lr 0.025 without a scheduler (the hypergradient of log10 lr does not see the
    factor), step by step."""
    x, y = data(1)
    runs = []
    for lr, factor in ((0.05, 0.5), (0.025, None)):
        torch.manual_seed(0)
        model = MLP(8, 6, 1)
        opt = OnePassSGD(model.parameters(), lr=lr, weight_decay=1e-3, momentum=0.5, model=model, update_interval=5)
        scheduler = None if factor is None else torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor)
        train(model, opt, x, y, 40, scheduler=scheduler)
        runs.append((model, opt))
    (a, opt_a), (b, opt_b) = runs
    lrs_a, lrs_b = [s[0][0] for s in opt_a.trace], [s[0][0] for s in opt_b.trace]
    assert lrs_a == pytest.approx(lrs_b, rel=1e-5) and len(set(lrs_a)) > 4    # tuned, and the same
    assert opt_a.param_groups[0]["lr"] == 0.025 and opt_a.param_groups[0]["initial_lr"] == 0.05
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def train_with_autocast(model, opt, x, y, steps: int, device: str, dtype, enabled: bool = True) -> tuple:
    """Train ``model`` with ``opt`` on 16-row batches of the first 64 rows under autocast to ``dtype`` with a
    GradScaler (its step on the backward loop's steps, the closures under autocast too; ``enabled`` False: a
    plain float32 loop); returns the loss on the rows from 64 on before and after."""
    scaler = torch.amp.GradScaler(device, enabled=enabled)

    def loss_of(i):
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return F.mse_loss(model(x[i]).float(), y[i])

    first = loss_of(slice(64, None)).item()
    for step in range(steps):
        i = slice(step % 4 * 16, step % 4 * 16 + 16)
        if opt.needs_closure:
            opt.step(lambda: loss_of(i), val_closure=lambda: loss_of(slice(64, None)))
        else:
            opt.zero_grad()
            scaler.scale(loss_of(i)).backward()
            scaler.step(opt)
            scaler.update()
    return first, loss_of(slice(64, None)).item()


def test_autocast_and_grad_scaler_train_with_float32_hyperparameters():
    """bfloat16 autocast on the CPU with torch.amp.GradScaler: no NaN, the loss falls, the hyperparameters and
    hypergradients float32."""
    x, y = data(2)
    torch.manual_seed(0)
    model = MLP(8, 16, 1)
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-3, momentum=0.5, model=model, update_interval=5)
    first, last = train_with_autocast(model, opt, x, y, 60, "cpu", torch.bfloat16)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert last < 0.7 * first and opt.hyper_step == 12
    saved = opt.state_dict()["onepass"]["hypers"][0]["values"]
    assert all(t.dtype == torch.float32 for name in saved for t in saved[name])
    assert all(g.dtype == torch.float32 for g in opt.last_hypergradient[0].values())
    assert opt.hyperparameters[0]["lr"] != pytest.approx(0.05, rel=1e-3)


def test_a_float64_model_has_float64_hyperparameters():
    x, y = data(3, dtype=torch.float64)
    torch.manual_seed(0)
    model = MLP(8, 6, 1).double()
    opt = OnePassSGD(model.parameters(), lr=0.05, model=model, update_interval=5)
    assert train(model, opt, x, y, 20) < F.mse_loss(torch.zeros_like(y[64:]), y[64:]).item()
    assert all(g.dtype == torch.float64 for g in opt.last_hypergradient[0].values())
    assert opt.state[next(model.parameters())]["momentum_buffer"].dtype == torch.float64


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(3, 8), nn.Linear(16, 1)

    def forward(self, x, z):
        return self.head(torch.tanh(torch.cat([self.a(x), self.b(z)], 1)))


class DictBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 1)

    def forward(self, batch: dict):
        return self.head(torch.tanh(self.body(batch["features"]) * batch["mask"])).squeeze(1)


@pytest.mark.parametrize("kind", ["two inputs", "dict batch"])
def test_a_two_input_model_and_a_dict_batch_model_train(kind):
    """Any model signature, batch type and loss: the closures call the model as the loop does."""
    x, y = data(4)
    z = torch.randn(96, 3, generator=torch.Generator().manual_seed(9))
    y = y + 0.5 * z[:, :1]
    torch.manual_seed(0)
    model = TwoInputs() if kind == "two inputs" else DictBatch()
    if kind == "two inputs":
        loss_of = lambda i: F.mse_loss(model(x[i], z[i]), y[i])   # noqa: E731
    else:
        batch = {"features": x, "mask": torch.ones(96, 16), "target": y[:, 0]}
        loss_of = lambda i: F.mse_loss(model({k: v[i] for k, v in batch.items()}), batch["target"][i])  # noqa
    first = loss_of(slice(64, None)).item()
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-4, momentum=0.5, model=model, update_interval=5)
    last = train(model, opt, x, y, 200, loss_of=loss_of)
    assert last < 0.5 * first and opt.hyper_step == 40
    assert opt.hyperparameters[0]["lr"] != pytest.approx(0.05, rel=1e-3)


def ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of the DDP run: the same initial model, its own batches; DDP averages the backward loop's
    gradients, the optimiser the hyperparameter steps' gradient and hypergradient."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = MLP(8, 6, 1)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-3, momentum=0.5, model=model, update_interval=5)
    x, y = data(10 + rank)          # every rank its own data
    for step in range(30):
        i = slice(step % 4 * 16, step % 4 * 16 + 16)
        if opt.needs_closure:       # the closures call the module itself (DDP's hooks only see backward())
            opt.step(lambda: F.mse_loss(model(x[i]), y[i]), val_closure=lambda: F.mse_loss(model(x[64:]), y[64:]))
        else:
            opt.zero_grad()
            F.mse_loss(ddp(x[i]), y[i]).backward()
            opt.step()
    torch.save({"hypers": opt.hyperparameters, "weights": [p.detach() for p in model.parameters()]},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_rank_gloo_ddp_reaches_the_same_hyperparameters_on_both_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP run took over 180 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["hypers"] == ranks[1]["hypers"]
    assert ranks[0]["hypers"][0]["lr"] != pytest.approx(0.05, rel=1e-3)
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)
