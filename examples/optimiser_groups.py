"""A plain loop (no Lightning, no Trainer) with parameter groups: weight decay tuned on the weights, none on
the biases and the LayerNorm; a StepLR scheduler multiplies the tuned lr; the tuned schedule is exported and
replayed with plain torch.optim.SGD."""
import torch
import torch.nn.functional as F

import onepass

g = torch.Generator().manual_seed(0)
x = torch.randn(512, 12, generator=g)
y = torch.sin(x[:, :3].sum(1, keepdim=True)) + 0.1 * torch.randn(512, 1, generator=g)
train, valid = (x[:384], y[:384]), (x[384:], y[384:])

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.LayerNorm(32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
decay = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
no_decay = [p for name, p in model.named_parameters() if not (name.endswith("weight") and p.dim() > 1)]
opt = onepass.OnePassSGD([{"params": decay, "weight_decay": 1e-3},
                          {"params": no_decay, "weight_decay": 0.0, "optimise": ["lr", "momentum"]}],
                         lr=0.05, momentum=0.5, model=model, update_interval=10)
scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=150, gamma=0.5)   # x 0.5 on the tuned lr


def loss_on(data, rows):
    return F.mse_loss(model(data[0][rows]), data[1][rows])


for step in range(300):
    rows = torch.randint(0, 384, (32,), generator=g)
    if opt.needs_closure:
        opt.step(lambda: loss_on(train, rows), val_closure=lambda: loss_on(valid, slice(None)))
    else:
        opt.zero_grad()
        loss_on(train, rows).backward()
        opt.step()
    scheduler.step()
for i, h in enumerate(opt.hyperparameters):
    print(f"group {i}: lr {h['lr']:.3g} weight decay {h['weight_decay']:.3g} momentum {h['momentum']:.3f}")
print(f"validation MSE {loss_on(valid, slice(None)).item():.3f}")
schedule = onepass.schedule(opt)   # the lr, weight decay and momentum of every step, per group
print(f"{len(schedule)} steps exported; replay: schedule.apply(torch.optim.SGD(...), step) before each step")
