"""Exact resume: a sampler whose position is the global step, and RNG state kept in checkpoints.

Lightning restarts a plain DataLoader from the start of its epoch after a mid-epoch resume, and keeps
no RNG state; both would make a resumed run drift from an uninterrupted one. Here the data order is a
pure function of (seed, sample position), so a stage's ``train_dataloader`` (called after Lightning
has restored ``trainer.global_step``) starts at exactly the sample the crashed run would have read
next, and the RNG callback puts torch/numpy/python generators back as they were at the checkpoint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Sampler


class StepSampler(Sampler[int]):
    """An endless, resumable sampler: position ``n`` -> a dataset index, the same on every run.

    Each pass over the ``num_items`` indices is a fresh permutation seeded by (seed, pass). Under DDP,
    rank ``r`` of ``world`` reads positions ``r, r + world, …`` so ranks never share samples.
    """

    def __init__(self, num_items: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, positions: bool = False):
        if num_items <= 0:
            raise ValueError("StepSampler needs a non-empty dataset")
        self.num_items, self.seed, self.start = num_items, seed, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.positions = positions

    def _order(self, epoch: int) -> np.ndarray:
        """The dataset indices of pass ``epoch``, in reading order."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world_size + self.rank
        cache_epoch, order = -1, None
        while True:
            epoch, offset = divmod(position, self.num_items)
            if epoch != cache_epoch:
                order, cache_epoch = self._order(epoch), epoch
            index = int(order[offset])
            # With ``positions`` the dataset gets (position, index): a sample's own random draws can then be
            # seeded by its position, so they too are the same after a resume.
            yield (position, index) if self.positions else index
            position += self.world_size

    def __len__(self) -> int:
        # Endless: Lightning stops at max_steps. A large finite length keeps len()-based code working.
        return 2**31 - 1


def step_sampler(module: L.LightningModule, num_items: int, batch_size: int, seed: int,
                 positions: bool = False, steps_per_batch: int = 1) -> StepSampler:
    """The sampler for a stage's ``train_dataloader``: starts where ``trainer.global_step`` says.

    Samples already read = (global_step // steps_per_batch) x batch size x gradient accumulation (per
    rank); ``steps_per_batch`` > 1 for stages that take several optimizer steps per batch (GRPO's
    ``num_iterations``). With ``positions`` it yields ``(position, index)`` pairs (see :class:`StepSampler`).
    """
    trainer = module._trainer  # None outside a Trainer (e.g. a user calling train_dataloader by hand)
    step = trainer.global_step if trainer is not None else 0
    accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    world = trainer.world_size if trainer is not None else 1
    start = (step // steps_per_batch) * batch_size * accumulate
    return StepSampler(num_items, seed, start=start, rank=rank, world_size=world, positions=positions)


def read_key(key: int | tuple[int, int], seed: int, rng: np.random.Generator) -> tuple[int, np.random.Generator]:
    """A dataset key from :class:`StepSampler` -> (item index, the generator for that item's random draws).

    With ``positions=True`` the key is ``(position, index)`` and the draws are seeded by ``(seed, position)``,
    so a resumed run draws exactly what the uninterrupted one did; a plain index keeps ``rng``.
    """
    if isinstance(key, tuple):
        position, index = key
        return int(index), np.random.default_rng([seed, position])
    return int(key), rng


class RNGStateCallback(L.Callback):
    """Saves the torch, numpy and python RNG states in each checkpoint and restores them on resume.

    Restored at the first training batch after resume, so work done in between (building
    dataloaders, starting workers) cannot consume the restored state.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": _python_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class FiniteLossCallback(L.Callback):
    """Stops training at the first NaN or infinite loss, before a checkpoint can store the broken weights.

    Lightning runs checkpoint callbacks after every other callback, so raising here in
    ``on_train_batch_end`` keeps ``last.ckpt`` at the last good step.
    """

    def __init__(self) -> None:
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this batch trains (global_step moves on before batch end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            loss = trainer.callback_metrics.get("train/loss")
        if loss is None or not isinstance(loss, (torch.Tensor, float, int)):
            return
        value = float(torch.as_tensor(loss).detach().float().cpu())
        if math.isfinite(value):
            return
        from must.errors import MustError

        ckpt = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")), None)
        kept = f"the last good checkpoint is kept: {ckpt.last_model_path}" if ckpt else "no checkpoint was written yet"
        raise MustError(f"training loss became {value} at step {self._step}; "
                        f"stopped; {kept}. Lower the learning rate or set trainer.gradient_clip_val, "
                        f"then run again with --resume")


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
