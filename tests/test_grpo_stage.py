"""The GRPO LightningModule on a tiny text LM with LoRA: what trains, what is reused, what is skipped."""

import contextlib
import string

import lightning as L
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from must.errors import ConfigError
from must.rl.decoding import completion_logits
from must.rl.losses import token_logps
from must.rl.policy import TextPolicy, left_pad
from must.rl.timing import Timings
from must.stages.grpo import GRPOStage, Options


def char_tokenizer():
    words = ["<pad>", "</s>", "<unk>", *(string.digits + string.ascii_lowercase + " :-?")]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_lm(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


class CountingPolicy(TextPolicy):
    """TextPolicy that counts how often each prompt is encoded and embedded, and reference passes."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.encoded_rows, self.embed_calls, self.adapter_off = 0, 0, 0

    def encode(self, rows):
        self.encoded_rows += len(rows)
        return super().encode(rows)

    def embed(self, items):
        self.embed_calls += 1
        return super().embed(items)


def lora_policy(seed=0):
    tok = char_tokenizer()
    lm = get_peft_model(tiny_lm(len(tok), seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    policy = CountingPolicy(lm, tok)
    real = lm.disable_adapter

    @contextlib.contextmanager
    def counted():
        policy.adapter_off += 1
        with real():
            yield

    lm.disable_adapter = counted
    return policy


def varied(prompts, completions, **kw):
    """Distinct characters in the answer: differs between samples of a random policy."""
    return [len(set(c)) / 10 for c in completions]


def flat_or_varied(prompts, completions, **kw):
    """Constant for prompts that say 'flat' (a group with no signal), else ``varied``."""
    return [1.0 if "flat" in p else len(set(c)) / 10 for p, c in zip(prompts, completions)]


DATA = [{"prompt": f"when does {w} enter?", "task": "TSG"} for w in ["bass", "drums", "voice", "piano", "synth", "harp"]]


def fit(stage, steps):
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(stage)
    return trainer


def test_trains_lora_only_and_saves(tmp_path):
    policy = lora_policy()
    opts = Options(batch_size=2, num_generations=4, max_completion_length=6, lr=5e-2,
                   refill_groups=False)
    stage = GRPOStage(policy, [varied], DATA, opts)
    before = {n: p.detach().clone() for n, p in policy.lm.named_parameters()}
    trainer = fit(stage, 3)
    moved = {n for n, p in policy.lm.named_parameters() if not torch.equal(p, before[n])}
    lora = {n for n, _ in policy.lm.named_parameters() if "lora_" in n}
    assert moved == lora  # every adapter weight moved, nothing else did
    assert trainer.global_step == 3
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["reward"] == pytest.approx(m["rewards/varied"])  # one reward function, weight 1
    assert 0.0 <= m["reward"] <= 1.0 and m["reward_std"] >= 0.0 and m["entropy"] > 0.0
    assert 1.0 <= m["completion_length"] <= 6.0 and 0.0 <= m["clip_ratio/region"] <= 1.0
    stage.save_model(tmp_path / "model")
    # The folder holds the trained adapters, value for value, and the tokenizer that reads the prompts.
    from peft import PeftModel
    from transformers import AutoTokenizer

    reloaded = PeftModel.from_pretrained(tiny_lm(len(policy.tokenizer)), tmp_path / "model")
    trained = dict(policy.lm.named_parameters())
    for n, p in reloaded.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, trained[n]), n
    assert AutoTokenizer.from_pretrained(tmp_path / "model")("b:1").input_ids == policy.tokenizer("b:1").input_ids


def test_prompts_encoded_once_and_no_reference_pass_at_beta_zero():
    policy = lora_policy()
    opts = Options(batch_size=2, num_generations=4, max_completion_length=5, num_iterations=3, beta=0.0,
                   refill_groups=False)
    timings = Timings()
    stage = GRPOStage(policy, [varied], DATA, opts, timings=timings)
    trainer = fit(stage, 6)  # 6 optimiser steps = 2 batches of rollouts x 3 passes
    assert trainer.global_step == 6
    assert policy.encoded_rows == 2 * 2  # each prompt encoded once, reused by its 4 samples and 3 passes
    assert policy.embed_calls == 2 * (1 + 3)  # sampling + one per pass; no separate old-policy pass
    assert policy.adapter_off == 0 and timings.counts["reference"] == 0
    assert timings.counts["update"] == 6 and timings.counts["encode"] == 2 and timings.counts["rollouts"] == 2 * 2 * 4


def test_reference_is_the_policy_with_adapters_off():
    policy = lora_policy(seed=1)
    base = tiny_lm(len(policy.tokenizer), seed=1)  # same base weights, no adapters
    with torch.no_grad():  # move the adapters away from the identity so policy != reference
        for n, p in policy.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    opts = Options(batch_size=2, num_generations=3, max_completion_length=5, beta=0.1, refill_groups=False)
    stage = GRPOStage(policy, [varied], DATA, opts)
    roll, _ = stage.collect(DATA[:2])
    ref = stage._reference_logps(roll)
    assert policy.adapter_off == 1
    prompt_mask, mask = policy.embed(roll.encoded)[1], roll.completion_mask
    logits = completion_logits(base, embed_with(base, policy, roll), prompt_mask, roll.completion_ids, 3)
    expected, _ = token_logps(logits, roll.completion_ids)
    torch.testing.assert_close(ref * mask, expected * mask, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        own, _ = token_logps(stage._logits(roll), roll.completion_ids)
    assert (own - ref).abs().max() > 1e-3  # the adapters do change the policy
    trainer = fit(stage, 2)
    assert "kl" in trainer.callback_metrics and policy.adapter_off == 1 + 2


def embed_with(base, policy, roll):
    """The prompt embeddings of the plain base model (the embedding table is not adapted)."""
    ids, _ = left_pad(roll.encoded, policy.tokenizer.pad_token_id)
    return base.get_input_embeddings()(ids)


def test_refill_groups_replaces_groups_whose_rewards_agree():
    policy = lora_policy()
    data = [{"prompt": f"flat {i}"} for i in range(4)] + [{"prompt": f"live {i}"} for i in range(4)]
    opts = Options(batch_size=4, num_generations=4, max_completion_length=6, max_refills=4)
    stage = GRPOStage(policy, [flat_or_varied], data, opts)
    rows = [data[0], data[1], data[4], data[5]]
    roll, stats = stage.collect(rows)
    assert stats["frac_reward_zero_std"] == 0.5
    assert stats["refills"] >= 1
    assert len(roll.rows) == 4 and all(r["prompt"].startswith("live") for r in roll.rows)
    assert roll.completion_ids.size(0) == 16 and roll.rewards.shape == (16,)
    # a batch with nothing to learn from keeps its size after the refills run out
    flat = GRPOStage(lora_policy(), [flat_or_varied], data[:4], Options(batch_size=2, num_generations=3,
                                                                       max_completion_length=4, max_refills=2))
    roll, stats = flat.collect(data[:2])
    assert len(roll.rows) == 2 and stats["refills"] == 2 and stats["frac_reward_zero_std"] == 1.0


def test_bad_options_are_named():
    policy = lora_policy()
    with pytest.raises(ConfigError, match=r"options\.loss_type: one of .*got 'ppo'"):
        GRPOStage(policy, [varied], DATA, Options(loss_type="ppo"))
    with pytest.raises(ConfigError, match=r"options\.num_generations: must be at least 2 .*got 1$"):
        GRPOStage(policy, [varied], DATA, Options(num_generations=1))
    with pytest.raises(ConfigError, match=r"options\.top_p: must be in \(0, 1\], got 0\.0"):
        GRPOStage(policy, [varied], DATA, Options(top_p=0.0))
    with pytest.raises(ConfigError, match=r"options\.reward_weights: no reward function named \['nope'\] \(have \['varied'\]\)"):
        GRPOStage(policy, [varied], DATA, Options(reward_weights={"nope": 1.0}))
    plain = TextPolicy(tiny_lm(len(policy.tokenizer)), policy.tokenizer)
    with pytest.raises(ConfigError, match=r"options\.beta > 0 needs a LoRA \(peft\) policy"):
        GRPOStage(plain, [varied], DATA, Options(beta=0.1))


def digit_share(prompts, completions, **kw):
    """Share of digits in the answer (a random policy starts near 0.25)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.slow
def test_reward_rises_on_an_easy_task():
    tok = char_tokenizer()
    stage = GRPOStage(TextPolicy(tiny_lm(len(tok)), tok), [digit_share], DATA,
                      Options(batch_size=3, num_generations=8, max_completion_length=8, lr=3e-3,
                              num_iterations=2))
    rewards = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            rewards.append(float(trainer.callback_metrics["reward"]))

    trainer = L.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[Record()])
    trainer.fit(stage)
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.5 and last > first + 0.3, rewards


def test_refill_draws_depend_on_step_and_round_only():
    """A resumed run must refill exactly as the uninterrupted one: the draw of (step, round) is the same
    whatever was drawn before it, and differs between rounds and steps."""
    data = [{"prompt": f"p{i}"} for i in range(40)]
    stage = GRPOStage(lora_policy(), [varied], data, Options(batch_size=4, num_generations=2))

    def draw(step: int, round_: int) -> list[str]:
        return [r["prompt"] for r in stage._refill_rows(round_, step)]

    first = draw(3, 0)
    for r in range(3):  # earlier draws, as an uninterrupted run would have made, change nothing
        draw(1, r)
    assert draw(3, 0) == first
    assert draw(3, 1) != first and draw(4, 0) != first
    assert len(first) == 4 and len(set(first)) == 4
