"""Test-only stage kinds for the scale and reliability tests, given to recipes by dotted path.

- ``PauseAt``: a mixin that, when ``MUST_TEST_PAUSE_AT=N`` is set, writes ``paused.json`` at the start of
  global step N and sleeps, so a test can ``kill -9`` the run in the middle of training; it also records
  the global step every fit starts from (``starts.json``).
- ``ResumableSFT``: SFT (data order and question draws are functions of the sample position) with the pause hook.
- ``PausingGRPO``: GRPO as it is (its data order is already a StepSampler) with the pause hook.
- ``NaNProducer``: the foundation tests' toy stage, its loss NaN from ``MUST_TEST_NAN_AT`` on.
- ``PausingProducer``: the toy stage with the pause hook (a run a test can signal in the middle of training).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from must.stages.grpo import GRPOStage
from must.stages.sft import SFTStage
from tests._stages import Producer


class PauseAt:
    """Mixin: pause (sleep) at global step ``MUST_TEST_PAUSE_AT``; record each fit's starting step."""

    def on_train_start(self) -> None:
        if self.trainer.is_global_zero:
            path = self._stage_dir() / "starts.json"
            starts = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps(starts + [int(self.global_step)]))
        super().on_train_start()

    def on_train_batch_start(self, batch, batch_idx):
        pause = int(os.environ.get("MUST_TEST_PAUSE_AT", "-1"))
        if self.global_step == pause:
            (self._stage_dir() / "paused.json").write_text(json.dumps({"step": int(self.global_step), "pid": os.getpid()}))
            while True:  # wait for the test's kill -9
                time.sleep(1)
        return super().on_train_batch_start(batch, batch_idx)

    def _stage_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)  # the runner sets it to OUTPUT_DIR/<stage>


class ResumableSFT(PauseAt, SFTStage):
    """SFT as it is (its data order and question draws follow the sample position) with the pause hook."""


def completion_length(prompts, completions, **columns) -> list[float]:
    """A reward that always varies within a group (an untrained tiny model earns the same zero from the
    temporal rewards for every sample, so nothing would move and the test would prove nothing)."""
    return [float(len(c)) / 10 for c in completions]


class PausingGRPO(PauseAt, GRPOStage):
    """GRPO as shipped (MusicLALM policy, QA prompts, StepSampler order), a varying reward, the pause hook."""

    @classmethod
    def from_context(cls, ctx):
        stage = super().from_context(ctx)
        stage.reward_funcs, stage.reward_names = [completion_length], ["completion_length"]
        return stage


class NaNProducer(Producer):
    """The toy linear stage of the foundation tests, whose loss is NaN from global step ``MUST_TEST_NAN_AT`` on."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step >= int(os.environ.get("MUST_TEST_NAN_AT", "1000000")):
            loss = loss * float("nan")
        return loss


class PausingProducer(PauseAt, Producer):
    """The toy linear stage of the foundation tests with the pause hook (seconds, not minutes, to get there)."""

    def on_train_start(self) -> None:
        Producer.on_train_start(self)  # records the starting step once (PauseAt would record it a second time)
