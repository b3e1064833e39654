"""OnePassSGD with a model of a dict batch (as Hugging Face models take) and two inputs: the closures call
the model as the loop does, so any signature, batch type or loss works."""
import torch
import torch.nn.functional as F

import onepass


class Recommender(torch.nn.Module):
    """A score from a user's features and an item id: forward(batch) with batch["user"], batch["item"]."""

    def __init__(self, items: int = 20):
        super().__init__()
        self.user, self.item = torch.nn.Linear(6, 8), torch.nn.Embedding(items, 8)

    def forward(self, batch: dict) -> torch.Tensor:
        return (torch.tanh(self.user(batch["user"])) * self.item(batch["item"])).sum(1)


g = torch.Generator().manual_seed(0)
truth_user, truth_item = torch.randn(6, 4, generator=g), torch.randn(20, 4, generator=g)


def batch(n: int) -> dict:
    user, item = torch.randn(n, 6, generator=g), torch.randint(0, 20, (n,), generator=g)
    return {"user": user, "item": item, "score": ((user @ truth_user) * truth_item[item]).sum(1)}


def loss_of(model, b: dict) -> torch.Tensor:
    return F.mse_loss(model(b), b["score"])


torch.manual_seed(0)
model = Recommender()
opt = onepass.OnePassSGD(model.parameters(), lr=0.02, weight_decay=1e-4, momentum=0.5, model=model, algorithm="Ours_LR",
                         update_interval=10)                   # lr and weight decay tuned
valid = batch(256)
first = loss_of(model, valid).item()
for step in range(400):
    b = batch(32)
    opt.step(lambda: loss_of(model, b), val_closure=lambda: loss_of(model, valid))   # a closure at every step
print(f"validation MSE {first:.3f} -> {loss_of(model, valid).item():.3f}; tuned lr "
      f"{opt.hyperparameters[0]['lr']:.3g}, weight decay {opt.hyperparameters[0]['weight_decay']:.3g}")
