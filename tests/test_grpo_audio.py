"""GRPO on the tiny MusicLALM with synthetic tracks: audio encoded once per track, the right parameters train."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from must.data.config import DataConfig
from must.models.config import ModelConfig
from must.models.lalm import MusicLALM
from must.rewards import must_reward
from must.rl.data import QAPrompts, SynthTracks
from must.rl.policy import MusicPolicy
from must.rl.timing import Timings
from must.stages.grpo import GRPOStage, Options, set_trainable, train_globs


def varied(prompts, completions, **kw):
    """Distinct characters of the answer: an untrained model's answers differ in it, so groups carry signal."""
    return [len(set(c)) / 10 for c in completions]


def test_audio_encoded_once_and_projector_and_lora_train(tmp_path):
    torch.manual_seed(0)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"llm": {"lora": {"r": 4}}}))
    model = MusicLALM.from_config(cfg)
    set_trainable(model, *train_globs(model, Options()))
    calls = []
    encode = model.encode_audio

    def counted(waves, *a, **k):
        calls.append(len(waves))
        return encode(waves, *a, **k)

    model.encode_audio = counted
    data_cfg = DataConfig(min_seconds=20, max_seconds=24, train_tracks=4)
    data = QAPrompts(SynthTracks(data_cfg, "train"), questions_per_clip=2, seed=0)
    opts = Options(batch_size=2, questions_per_clip=2, num_generations=3, max_completion_length=6,
                   num_iterations=2, beta=0.1, lr=1e-2, refill_groups=False)
    policy = MusicPolicy(model, data_cfg.sample_rate)
    timings = Timings()
    stage = GRPOStage(policy, [must_reward, varied], data, opts, timings=timings)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(stage)

    # one rollout batch: 2 tracks x 2 questions x 3 samples, 2 passes and a reference pass -> one encoder call
    assert calls == [2] and policy.encoder_calls == 1
    assert timings.counts["rollouts"] == 12 and timings.counts["reference"] == 1
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("projector.") for n in moved)
    assert any("lora_" in n and n.startswith("llm.") for n in moved)
    assert not any(n.startswith("encoder.") for n in moved)
    assert all("lora_" in n for n in moved if n.startswith("llm."))  # the LLM base stays frozen
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before  # adapters-off undone
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # the total reward is the sum of the two functions' (weights 1.0); each component stays in its range
    assert m["reward"] == pytest.approx(m["rewards/must_reward"] + m["rewards/varied"], abs=1e-5)
    assert 0.0 <= m["valid_format"] <= 1.0 and 0.0 <= m["rewards/must_reward/format"] <= 1.0
    assert m["kl"] >= 0.0 and m["entropy"] > 0.0  # k3 KL estimate is never negative; sampling is not greedy

    stage.save_model(tmp_path / "model")
    again = MusicLALM.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(again.projector[0].weight, model.projector[0].weight)


@pytest.mark.parametrize("host", ["qwen2_audio", "qwen2_5_omni"])
def test_prefix_shared_passes_on_host_lalms(host):
    """With a host LALM (its audio tokens beside the MusT tokens) greedy sampling matches HF generate and the
    shared log-prob pass matches the concatenated one."""
    from must.rl.decoding import completion_logits, sample

    cfg = ModelConfig()
    cfg.host.kind = host
    model = MusicLALM.from_config(cfg).eval()
    policy = MusicPolicy(model, 16000)
    g = torch.Generator().manual_seed(0)
    rows = [{"waveform": 0.1 * torch.randn(16000 * 12, generator=g), "track_id": "a", "question": "When does the bass enter?"},
            {"waveform": 0.1 * torch.randn(16000 * 8, generator=g), "track_id": "b", "question": "What changes at 0:05?"}]
    embeds, mask = policy.embed(policy.encode(rows))
    tok = model.tokenizer
    with torch.no_grad():
        ours = sample(model.llm, embeds, mask, 2, 6, [tok.eos_token_id], tok.pad_token_id, greedy=True)
        hf = model.llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, max_new_tokens=6,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        shared = completion_logits(model.llm, embeds, mask, ours.completion_ids, 2)
        plain = completion_logits(model.llm, embeds, mask, ours.completion_ids, 2, share_prefix=False)
    hf = hf[:, embeds.size(1):] if hf.size(1) > 6 else hf  # Qwen2-Audio's generate returns the prompt positions too
    n = ours.completion_ids.size(1)
    assert torch.equal(ours.completion_ids[::2], hf[:, :n])
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
