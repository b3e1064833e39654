"""What a population reports about its members: history rows while it trains, report rows for an outer
search, every member's final results (a mix-in of :class:`onepass.population.Population`)."""

from __future__ import annotations

NAN = float("nan")


class Reports:
    """:meth:`log`, :meth:`report` and :meth:`results` of a population: its ``problem``, ``params``,
    ``buffers``, ``hypers``, ``alive``, ``stopped``, ``histories``, step counters and training-loss sums."""

    def report(self) -> list[dict]:
        """Every member's state now: training loss averaged since the last report, validation and test losses
        and metrics, current hyperparameters, steps. Members that diverged report NaN losses."""
        train, valid, test, hypers = self._now()
        out = []
        for i, alive in enumerate(self.alive.tolist()):
            values = {"train_loss": train[i], "valid_loss": float(valid["loss"][i]),
                      "test_loss": float(test["loss"][i]), "test_metric": float(test["metric"][i]),
                      "test_accuracy": float(test["accuracy"][i]) if "accuracy" in test else NAN,
                      "test_perplexity": float(test["perplexity"][i]) if "perplexity" in test else NAN}
            if not alive:
                values = {k: NAN for k in values}
            out.append({**values, **{k: v[i] for k, v in hypers.items()}, "diverged": not alive,
                        "hyper_step": self.hyper_step, "weight_step": self.weight_step})
        return out

    def _now(self) -> tuple:
        """Training losses averaged since the last call (the average restarted), evaluations of the validation
        and test splits, and hyperparameters (lists), of every member."""
        train = (self.loss_sum / self.loss_count).tolist() if self.loss_count else [NAN] * self.size
        self.loss_sum.zero_()
        self.loss_count = 0
        return train, self.evaluate("valid"), self.evaluate("test"), self.hyperparameters()

    def member_time(self) -> float:
        """Training time per member so far: the population's training time shared out among its members."""
        return self.train_time / self.size

    def log_due(self) -> bool:
        """Whether the last hyperparameter step reached a logging point (or the end)."""
        every = self.settings["log_every"]
        return (self.last_logged_step is None or self.weight_step // every > self.last_logged_step // every
                or self.hyper_step == self.settings["hyperparameter_steps"])

    def evaluate(self, split: str) -> dict:
        """Every member's loss and metrics on a whole split: a dict of [N] tensors."""
        return self.problem.evaluate(self.params, self.buffers, split)

    def log(self) -> None:
        """Evaluate every training member on the validation and test splits and append a history row each."""
        train, valid, test, hypers = self._now()
        columns = {"valid_loss": valid["loss"].tolist(), "test_loss": test["loss"].tolist(),
                   "test_metric": test["metric"].tolist()}
        time_s = self.member_time()
        for i in self.alive.nonzero().flatten().tolist():
            self.histories[i].append({"step": self.weight_step, "hyper_step": self.hyper_step, "time_s": time_s,
                                      "train_loss": train[i], **{k: v[i] for k, v in columns.items()},
                                      **{k: v[i] for k, v in hypers.items()}})
        self.last_logged_step = self.weight_step

    def results(self) -> list[dict]:
        """Every member's final record: steps, hyperparameters, losses on every split (NaN once diverged)."""
        splits = {s: self.evaluate(s) for s in ("train", "valid", "test")} if bool(self.alive.any()) else {}
        hypers = {k: v.tolist() for k, v in self.hypers.summary().items()}
        out = []
        for i in range(self.size):
            if self.stopped[i] is not None:
                weight_step, hyper_step, final = self.stopped[i]
                values = {"train_loss": NAN, "valid_loss": NAN, "test_loss": NAN, "test_metric": NAN,
                          "test_accuracy": NAN, "test_perplexity": NAN}
            else:
                weight_step, hyper_step = self.weight_step, self.hyper_step
                final = {k: v[i] for k, v in hypers.items()}
                values = {f"{s}_loss": float(splits[s]["loss"][i]) for s in ("train", "valid", "test")}
                test = splits["test"]
                values["test_metric"] = float(test["metric"][i])
                values["test_accuracy"] = float(test["accuracy"][i]) if "accuracy" in test else None
                values["test_perplexity"] = float(test["perplexity"][i]) if "perplexity" in test else None
            out.append({"diverged": self.stopped[i] is not None, "weight_steps": weight_step,
                        "hyperparameter_steps": hyper_step, "final": final, **values})
        return out

