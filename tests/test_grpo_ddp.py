"""GRPO under 2-process DDP on the CPU (gloo, forked): several passes per batch, ranks stay in sync."""

import hashlib
import json

import lightning as L
import torch
from test_grpo_stage import DATA, lora_policy, varied  # the tiny LoRA text policy of the stage tests

from must.rl.timing import Timings
from must.stages.grpo import GRPOStage, Options


class Fingerprint(L.Callback):
    """Each rank writes a hash of its trainable weights and its loss normaliser at the end of training."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_end(self, trainer, module):
        h = hashlib.sha256()
        for _, p in sorted(module.policy.lm.named_parameters()):
            h.update(p.detach().numpy().tobytes())
        out = {"hash": h.hexdigest(), "rank": trainer.global_rank, "world": trainer.world_size,
               "rollouts": module.timings.counts["rollouts"]}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


def test_two_process_ddp_keeps_ranks_in_sync(tmp_path):
    torch.manual_seed(0)
    policy = lora_policy()
    start = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for _, p in sorted(policy.lm.named_parameters())))
    opts = Options(batch_size=2, num_generations=3, max_completion_length=5, num_iterations=2,
                   lr=5e-2, refill_groups=True, max_refills=1)
    stage = GRPOStage(policy, [varied], DATA, opts, timings=Timings())
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Fingerprint(tmp_path)])
    trainer.fit(stage)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"]  # gradients were averaged: same weights on both ranks
    assert ranks[0]["hash"] != start.hexdigest()  # and they moved
    assert all(r["rollouts"] >= 2 * 2 * 3 for r in ranks)  # each rank sampled its own prompts
