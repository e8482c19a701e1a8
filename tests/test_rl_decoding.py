"""must.rl.decoding: prefix-shared group sampling and log-prob passes agree with the plain path and with HF generate."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from must.rl.decoding import completion_logits, sample

V, G, T = 40, 4, 9


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def prompts(lm):
    """Three prompts of lengths 7, 4 and 6, left-padded: ids (3, 7), mask (3, 7), embeddings (3, 7, 32)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, V, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, lm.get_input_embeddings()(ids).detach()


def test_greedy_matches_hf_generate_and_plain_path(lm, prompts):
    ids, mask, embeds = prompts
    shared = sample(lm, embeds, mask, G, T, [1], 0, greedy=True)
    plain = sample(lm, embeds, mask, G, T, [1], 0, greedy=True, share_prefix=False)
    hf = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=T, eos_token_id=1,
                     pad_token_id=0)[:, ids.size(1):]
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_ids[::G], hf[:, : shared.completion_ids.size(1)])
    assert torch.equal(shared.completion_ids[0::G], shared.completion_ids[1::G])  # greedy: the G samples agree


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_prefix_shared_sampling_draws_the_plain_path_tokens(lm, prompts, temperature, top_p):
    _, mask, embeds = prompts
    eos = [1, 5, 9, 13]  # many stop tokens: rows stop at different steps and leave the batch
    runs = [
        sample(lm, embeds, mask, G, T, eos, 0, temperature=temperature, top_p=top_p,
               generator=torch.Generator().manual_seed(7), share_prefix=share)
        for share in (True, False)
    ]
    shared, plain = runs
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_mask, plain.completion_mask)
    assert torch.equal(shared.finished, plain.finished)
    torch.testing.assert_close(shared.logps, plain.logps, atol=1e-5, rtol=1e-5)
    assert shared.finished.any() and not shared.finished.all()
    assert len(set(map(tuple, shared.completion_ids.tolist()))) > 3  # actually sampled, not one answer


def test_rows_stop_at_eos_with_padding_after(lm, prompts):
    _, mask, embeds = prompts
    eos = [1, 5, 9, 13]
    s = sample(lm, embeds, mask, G, T, eos, 0, generator=torch.Generator().manual_seed(3))
    for ids, m, done in zip(s.completion_ids.tolist(), s.completion_mask.tolist(), s.finished.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)
        assert ids[n:] == [0] * (len(m) - n)
        assert done == (ids[n - 1] in eos)
        assert not any(t in eos for t in ids[: n - 1])  # nothing after the first EOS
        assert done or n == T
    assert s.completion_ids.size(1) <= T


def test_top_p_small_is_greedy(lm, prompts):
    _, mask, embeds = prompts
    nucleus = sample(lm, embeds, mask, G, T, [1], 0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    greedy = sample(lm, embeds, mask, G, T, [1], 0, greedy=True)
    assert torch.equal(nucleus.completion_ids, greedy.completion_ids)


def test_shared_log_prob_pass_equals_plain_pass_and_sampling(lm, prompts):
    _, mask, embeds = prompts
    s = sample(lm, embeds, mask, G, T, [1, 5], 0, temperature=0.9, generator=torch.Generator().manual_seed(2))
    grads = []
    for share in (True, False):
        e = embeds.clone().requires_grad_()
        logits = completion_logits(lm, e, mask, s.completion_ids, G, share_prefix=share)
        logps = torch.log_softmax(logits / 0.9, -1).gather(-1, s.completion_ids[..., None]).squeeze(-1)
        (logps * s.completion_mask).sum().backward()
        grads.append((logits.detach(), e.grad))
    (shared, g_shared), (plain, g_plain) = grads
    assert shared.shape == (3 * G, s.completion_ids.size(1), V)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_shared, g_plain, atol=1e-5, rtol=1e-4)  # gradients reach the prompt embeddings
    real = g_shared[mask.bool()]
    assert real.abs().sum() > 0
    logps = torch.log_softmax(shared / 0.9, -1).gather(-1, s.completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logps * s.completion_mask, s.logps, atol=1e-5, rtol=1e-4)


def test_log_prob_pass_with_gradient_checkpointing_keeps_the_prompt(lm, prompts):
    """Checkpointed layers drop the KV cache in a gradient pass; the shared path must then still see the prompt."""
    _, mask, embeds = prompts
    s = sample(lm, embeds, mask, G, T, [1], 0, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = completion_logits(lm, embeds, mask, s.completion_ids, G)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.train()
    try:
        e = embeds.clone().requires_grad_()
        logits = completion_logits(lm, e, mask, s.completion_ids, G)
        logits.sum().backward()
    finally:
        lm.gradient_checkpointing_disable()
        lm.eval()
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-4)
    assert e.grad.abs().sum() > 0
