"""Two tiny test-only stages, given to recipes by dotted path (``tests._stages:Producer``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from must.resume import step_sampler
from must.stages.options.groups import Evaluation


@dataclass
class ToyOptions:
    """Options of the toy stages."""

    lr: float = 0.1
    """Learning rate."""
    width: int = 4
    """Width of the linear layer."""


class Producer(L.LightningModule):
    """Fits a linear map on fixed random data; saves its weights as the stage's model."""

    Options = ToyOptions

    def __init__(self, options: ToyOptions, stage_dir: Path, init: dict | None = None):
        super().__init__()
        self.options = options
        self.stage_dir = stage_dir
        self.layer = torch.nn.Linear(options.width, 1)
        if init is not None:
            self.layer.load_state_dict(init)
        self.loaded_sum = None if init is None else float(sum(v.sum() for v in init.values()))

    @classmethod
    def from_context(cls, ctx):
        init = None
        if ctx.init_dir is not None:
            init = torch.load(Path(ctx.init_dir) / "weights.pt", weights_only=True)
        return cls(ctx.options, ctx.stage_dir, init)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, self.options.width, generator=g)
        data = TensorDataset(x, x.sum(1, keepdim=True))
        return DataLoader(data, batch_size=8, sampler=step_sampler(self, len(data), 8, seed=1))

    def on_train_start(self):
        path = self.stage_dir / "starts.json"
        starts = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(starts + [int(self.global_step)]))

    def training_step(self, batch, batch_idx):
        crash_at = int(os.environ.get("MUST_TEST_CRASH_AT", "-1"))
        if self.global_step == crash_at:
            raise RuntimeError(f"simulated crash at step {crash_at}")
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)  # draws from the global RNG: resume must restore it
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.options.lr)

    def save_model(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.layer.state_dict(), path / "weights.pt")

    def evaluate(self, out_dir: Path, name: str) -> dict:
        out_dir.mkdir(parents=True, exist_ok=True)
        result = {"loaded_sum": self.loaded_sum}
        (out_dir / "scores.json").write_text(json.dumps(result))
        return result


class Consumer(Producer):
    """Same toy model; starts from the previous stage's weights (checked by value in the tests)."""


@dataclass
class GradedOptions(ToyOptions, Evaluation):
    """Toy options with the shared evaluation group (eval_init, eval_final, ...)."""


class Graded(Producer):
    """The toy stage with the shared evaluation options and a ``train_globs``: the runner's eval path."""

    Options = GradedOptions

    @staticmethod
    def train_globs(model, options):
        return ["layer.weight"], []


def toy_recipe(tmp_path: Path, *stages: dict, logger: str = "none") -> Path:
    """``tmp_path/toy.yaml``: a recipe named ``toy`` writing to ``tmp_path/out`` with these stage blocks (JSON
    is YAML); a stage's ``trainer`` gets ``enable_progress_bar: false`` unless it says otherwise."""
    blocks = [{**s, "trainer": {"enable_progress_bar": False, **s.get("trainer", {})}} for s in stages]
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps({"name": "toy", "output_dir": str(tmp_path / "out"), "logger": {"kind": logger},
                                "stages": blocks}, indent=2))
    return path
