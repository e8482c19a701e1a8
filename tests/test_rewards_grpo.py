"""The router plugs into TRL's own GRPOTrainer: two optimiser steps on a tiny random Qwen2 built from config."""

import pytest
import torch

pytest.importorskip("trl")


def test_grpo_trainer_runs_two_steps_with_the_router(tmp_path):
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from must.models.tokenizer import build_tiny_tokenizer
    from must.rewards import format_reward, must_reward, score_completion, timestamp_reward

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    data = Dataset.from_list([
        {"prompt": "When does the bass enter?", "task": "TSG", "answer": "0:30", "duration": 97.0},
        {"prompt": "Which change happens at 0:40? A B C D", "task": "LTR", "answer": "B", "duration": 97.0},
        {"prompt": "When is the arousal highest?", "task": "MTR", "answer": "0:57\u20131:12", "duration": 97.4},
        {"prompt": "Describe the change at 0:40.", "task": "TAD", "answer": "the drums enter", "duration": 97.0},
    ])
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
        max_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[], use_vllm=False, use_cpu=True,
        save_strategy="no", temperature=1.0, bf16=False, fp16=False, gradient_accumulation_steps=1,
    )
    seen = []

    def must_reward_spy(prompts, completions, **columns):
        out = must_reward(prompts, completions, **columns)
        seen.append((list(columns["task"]), completions, out, list(columns["answer"]), list(columns["duration"])))
        return out

    must_reward_spy.__name__ = "must_reward"
    trainer = GRPOTrainer(
        model=model, reward_funcs=[must_reward_spy, timestamp_reward, format_reward], args=args,
        train_dataset=data, processing_class=tok,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    logged = {k for entry in trainer.state.log_history for k in entry}
    # TRL logs the mean of what the router returned, step by step
    means = [e["rewards/must_reward/mean"] for e in trainer.state.log_history if "rewards/must_reward/mean" in e]
    assert means == pytest.approx([sum(out) / len(out) for _, _, out, _, _ in seen], abs=1e-5)
    # the router's components reach TRL's logs through its log_metric hook
    assert "must_reward/accuracy" in logged and "must_reward/bad_format" in logged
    # TRL handed the dataset columns through (2 prompts x 2 generations a step, each task twice over the
    # two steps) and got one float per completion back
    assert len(seen) == 2
    assert sorted(t for tasks, *_ in seen for t in tasks) == sorted(["TSG", "LTR", "MTR", "TAD"] * 2)
    for tasks, completions, out, answers, durations in seen:
        assert len(out) == len(completions) == 4 and all(isinstance(r, float) for r in out)
        # each is the completion's total against its own row's answer and duration
        want = [score_completion(t, c, a, None, d)["total"] for t, c, a, d in zip(tasks, completions, answers, durations)]
        assert out == pytest.approx(want)
