"""Distributed strategies on the CPU through ``must run`` in a subprocess (DDP workers re-run the command):
all four stages under 2-process DDP, SFT under FSDP2 (``strategy: fsdp2``, Lightning's
ModelParallelStrategy with ``fully_shard``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from must.models.lalm import MusicLALM
from tests._tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
MODEL = TINY_MODEL
DATA = {"min_seconds": 20, "max_seconds": 20, "train_tracks": 8, "val_tracks": 1, "test_tracks": 1,
        "questions_per_track": 2}


def _trainer(strategy: str, **extra) -> dict:
    return {"accelerator": "cpu", "devices": 2, "strategy": strategy, "max_steps": 2, "limit_val_batches": 0,
            "enable_progress_bar": False, "log_every_n_steps": 1, **extra}


def _run(tmp_path: Path, stages: list[dict]) -> str:
    recipe = {"name": "dist", "seed": 0, "output_dir": str(tmp_path / "out"), "logger": {"kind": "csv"},
              "model": MODEL, "data": DATA, "stages": stages}
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "must.cli", "run", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in MusicLALM.from_pretrained(folder).state_dict().items()}


@pytest.mark.slow
def test_all_four_stages_under_two_process_ddp(tmp_path):
    stages = [
        {"name": "enc", "kind": "encoder_adapt", "options": {"batch_size": 1}, "trainer": _trainer("ddp")},
        {"name": "cap", "kind": "lm_adapt", "init_from": "enc", "options": {"batch_size": 1},
         "trainer": _trainer("ddp")},
        {"name": "sft", "kind": "sft", "init_from": "cap",
         "options": {"batch_size": 1, "questions_per_clip": 2, "eval_max_tracks": 1, "eval_max_new_tokens": 4},
         "trainer": _trainer("ddp")},
        {"name": "rl", "kind": "grpo", "init_from": "sft",
         "options": {"batch_size": 1, "num_generations": 2, "max_completion_length": 4,
                     "refill_groups": False},
         "trainer": _trainer("ddp")},
    ]
    out = _run(tmp_path, stages)
    assert out.count("[must] summary of ") == 1  # the closing summary once, from rank 0
    run = tmp_path / "out"
    for name in ("enc", "cap", "sft", "rl"):
        record = json.loads((run / name / "record.json").read_text())
        assert record["status"] == "finished" and record["global_step"] == 2, name
        assert (run / name / "model" / "must_config.json").is_file()
        ckpt = torch.load(run / name / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert ckpt["global_step"] == 2
    # each stage moved what it trains: compare neighbouring stages' saved weights
    states = {n: _state(run / n / "model") for n in ("enc", "cap", "sft")}
    assert any(not torch.equal(states["enc"][k], states["cap"][k]) for k in states["enc"] if k.startswith("projector."))
    assert (run / "sft" / "eval" / "scores.json").is_file() and (run / "rl" / "eval" / "scores.json").is_file()


@pytest.mark.slow
def test_sft_under_fsdp2_on_two_cpu_processes(tmp_path):
    stages = [{"name": "sft", "kind": "sft",
               "options": {"batch_size": 1, "questions_per_clip": 2, "eval_max_tracks": 1, "eval_max_new_tokens": 4,
                           "lr": 1e-2},
               "trainer": _trainer("fsdp2", max_steps=3, checkpoint_every_n_steps=2)}]
    _run(tmp_path, stages)
    stage = tmp_path / "out" / "sft"
    record = json.loads((stage / "record.json").read_text())
    assert record["status"] == "finished" and record["global_step"] == 3
    # FSDP2 writes a sharded (distributed) checkpoint: one file per rank plus metadata
    shards = {p.name for p in (stage / "checkpoints" / "last.ckpt").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= shards
    # the saved model is whole (gathered from the shards): it loads, the LoRA and projector moved, the
    # frozen LLM base did not
    torch.manual_seed(0)
    trained = _state(stage / "model")
    from must.runner import stage_seed

    torch.manual_seed(stage_seed(0, "sft"))
    cfg = yaml.safe_load((tmp_path / "dist.yaml").read_text())["model"]
    start = {k: v.detach().clone() for k, v in MusicLALM.from_config(cfg).state_dict().items()}
    lora = [k for k in trained if "lora_B" in k]
    assert lora and any(not torch.equal(trained[k], start[k]) for k in lora)
    assert any(not torch.equal(trained[k], start[k]) for k in trained if k.startswith("projector."))
    base = [k for k in trained if k.startswith("llm.") and "lora_" not in k]
    assert all(torch.equal(trained[k], start[k]) for k in base)
    assert (stage / "eval" / "scores.json").is_file()


TOY = """
name: toy
output_dir: {out}
logger: {{kind: none}}
stages:
  - name: a
    kind: tests._stages:Producer
    trainer: {{accelerator: cpu, devices: {devices}, num_nodes: {nodes}, strategy: ddp, max_steps: 6,
               checkpoint_every_n_steps: 2, enable_progress_bar: false}}
  - name: b
    kind: tests._stages:Consumer
    init_from: a
    trainer: {{accelerator: cpu, devices: {devices}, num_nodes: {nodes}, strategy: ddp, max_steps: 2,
               enable_progress_bar: false}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("nodes,devices", [(1, 2), (2, 1)])
def test_torchrun_launch_single_and_two_node(tmp_path, nodes, devices):
    """torchrun starts every process itself (Lightning's TorchElastic environment); two "nodes" here are two
    torchrun agents on localhost sharing the output folder, as nodes share a file system."""
    path = tmp_path / "toy.yaml"
    path.write_text(TOY.format(out=tmp_path / "out", devices=devices, nodes=nodes))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={devices}", f"--node_rank={r}",
                               "--master_addr=127.0.0.1", f"--master_port={29600 + nodes}", "-m", "must.cli", "run",
                               str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(nodes)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:]
    assert sum(o.count("[must] summary of ") for o in outs) == 1  # only global rank 0 speaks and writes
    for name, steps in (("a", 6), ("b", 2)):
        record = json.loads((tmp_path / "out" / name / "record.json").read_text())
        assert record["status"] == "finished" and record["global_step"] == steps
