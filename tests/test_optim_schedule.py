"""A OnePassSGD run's hyperparameters as data: the exported schedule, replayed with plain torch.optim.SGD
(per-step values, or LambdaLR for the lr) on the same batches, retrains the one-pass run's weights and uses
its hyperparameter values step by step; the history goes to TensorBoard in one line."""

import pytest
import torch
import torch.nn.functional as F

import onepass
from onepass import OnePassSGD
from onepass.models import MLP


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g)).tanh()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], (x[64:], y[64:])


def one_pass(algorithm: str, steps: int, **options):
    """The one-pass run: (initial state of the model, trained model, optimiser, the values it used at each
    step as its public ``hyperparameters`` said just before the step)."""
    train, (vx, vy) = batches()
    torch.manual_seed(0)
    model = MLP(8, 6, 1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = OnePassSGD(model.parameters(), lr=0.05, weight_decay=1e-3, momentum=0.5, algorithm=algorithm, model=model,
                     **options)
    seen = []
    for step in range(steps):
        x, y = train[step % 4]
        if opt.method != "baydin":
            seen.append(opt.hyperparameters[0])
        if opt.needs_closure:
            opt.step(lambda: F.mse_loss(model(x), y), val_closure=lambda: F.mse_loss(model(vx), vy))
        else:
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        if opt.method == "baydin":   # Baydin's lr moves before its step
            seen.append({"lr": opt.trace[-1][0][0]})
    return initial, model, opt, seen


def replay(initial, sgd_of, set_values, steps: int):
    """Plain SGD from the same initial weights on the same batches: (model, the values of its group at each
    step)."""
    train, _ = batches()
    model = MLP(8, 6, 1)
    model.load_state_dict(initial)
    sgd, scheduler = sgd_of(model)
    used = []
    for step in range(steps):
        set_values(sgd, step)
        used.append({k: sgd.param_groups[0][k] for k in ("lr", "weight_decay", "momentum")})
        x, y = train[step % 4]
        sgd.zero_grad()
        F.mse_loss(model(x), y).backward()
        sgd.step()
        if scheduler is not None:
            scheduler.step()
    return model, used


def test_the_schedule_replayed_with_sgd_retrains_the_one_pass_run():
    """Ours (WD+LR+M), T 5, 40 steps: SGD set to the schedule's values before each step uses the values
    the one-pass run used and ends at its weights (float32 round-off)."""
    initial, model, opt, seen = one_pass("Ours_LR_Momentum", 40, update_interval=5)
    sched = onepass.schedule(opt)
    assert len(sched) == 40 and len({v[0] for v in sched.values}) == 8   # a new lr per block of 5
    replayed, used = replay(initial, lambda m: (torch.optim.SGD(m.parameters(), lr=1.0), None), sched.apply, 40)
    for step, (a, b) in enumerate(zip(used, seen)):
        assert a == pytest.approx(b, rel=1e-12), step
    for p, q in zip(model.parameters(), replayed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    # the same values as the hyperparameter steps' history
    for row in opt.history[:-1]:
        assert sched.at(row["step"]) == pytest.approx({k: row[k] for k in ("lr", "weight_decay", "momentum")})


def test_baydins_lr_schedule_replays_with_lambda_lr(tmp_path):
    """Baydin (the lr moves every step): torch's LambdaLR with the schedule's multiplier gives SGD the
    one-pass lr at every step and the one-pass weights; the schedule survives a JSON round trip."""
    initial, model, opt, seen = one_pass("Baydin", 40)
    sched = onepass.schedule(opt)
    sched.save(tmp_path / "schedule.json")
    sched = onepass.Schedule.load(tmp_path / "schedule.json")
    assert len({v[0][0] for v in sched.values}) > 30

    def sgd_of(m):
        first = sched.at(0)
        sgd = torch.optim.SGD(m.parameters(), lr=first["lr"], weight_decay=first["weight_decay"],
                              momentum=first["momentum"])
        return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, sched.lr_lambda())

    replayed, used = replay(initial, sgd_of, lambda sgd, step: None, 40)
    assert [u["lr"] for u in used] == pytest.approx([s["lr"] for s in seen], rel=1e-9)
    for p, q in zip(model.parameters(), replayed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_the_history_goes_to_tensorboard_in_one_line(tmp_path):
    _, _, opt, _ = one_pass("Ours_LR_Momentum", 20, update_interval=5)
    assert [row["step"] for row in opt.history] == [5, 10, 15, 20]

    class Recorder:
        calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    onepass.write_tensorboard(opt, Recorder())
    assert len(Recorder.calls) == 12
    assert ("onepass/group0/lr", opt.history[-1]["lr"], 20) in Recorder.calls
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        onepass.write_tensorboard(opt, writer)
    assert any(p.name.startswith("events.out.tfevents") and p.stat().st_size > 100 for p in tmp_path.iterdir())
