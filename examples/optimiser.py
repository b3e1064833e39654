import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes

import onepass

x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
order = torch.randperm(442, generator=torch.Generator().manual_seed(0))
x, y = x[order], y[order].unsqueeze(1)
x, y = (x - x[:300].mean(0)) / x[:300].std(0), (y - y[:300].mean()) / y[:300].std()
train, valid, test = (x[:300], y[:300]), (x[300:370], y[300:370]), (x[370:], y[370:])

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
opt = onepass.OnePassSGD(model.parameters(), lr=0.01, weight_decay=1e-4, momentum=0.5, model=model,
                         algorithm="Ours_LR_Momentum", update_interval=10)   # lr, weight decay, momentum tuned
for step in range(1000):
    i, j = torch.randint(0, 300, (32,)), torch.randint(0, 70, (32,))
    if opt.needs_closure:   # every 10th step: also the hyperparameter step, scored on validation data
        loss = opt.step(lambda: F.mse_loss(model(train[0][i]), train[1][i]),
                        val_closure=lambda: F.mse_loss(model(valid[0][j]), valid[1][j]))
    else:                   # the other steps: your usual loop
        opt.zero_grad()
        loss = F.mse_loss(model(train[0][i]), train[1][i])
        loss.backward()
        opt.step()
    if step % 250 == 0 or step == 999:
        h = opt.hyperparameters[0]
        print(f"step {step}: loss {loss:.3f} lr {h['lr']:.3g} weight decay {h['weight_decay']:.3g} "
              f"momentum {h['momentum']:.3f}")
with torch.no_grad():
    print(f"test MSE {F.mse_loss(model(test[0]), test[1]):.3f} (standardised targets)")
