"""benchmarks/tsg_probe.py: the abstract clips are what its docstring says, Hit@3s scores hand-built answers
as stated, and a short run of either model lowers its loss."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from must.timecode import format_time

_spec = importlib.util.spec_from_file_location(
    "tsg_probe", Path(__file__).resolve().parents[1] / "benchmarks" / "tsg_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _args(**kw):
    return probe.argparse.Namespace(**{"tokens": 100, "sources": 8, "present": 4, "runs": 1,
                                       "features": "onset", "answer": "digits", "source_last": False,
                                       "ask": "onset", **kw})


def test_clip_flags_the_first_onset_and_answers_it():
    batch = probe.draw(16, _args(runs=2), torch.Generator().manual_seed(0))
    assert batch["features"].shape == (16, 100, 16)
    for i in range(16):
        k, onset = int(batch["asked"][i]), float(batch["at"][i])
        sounding, starts = batch["features"][i, :, k], batch["features"][i, :, 8 + k]
        first = int(torch.nonzero(starts)[0])  # the first token flagged as a start of the asked source
        assert abs(float(batch["times"][first]) - onset) <= probe.STEP_S  # ... is at its first onset
        assert sounding[:first].sum() == 0 and sounding[first] == 1
        m, _, tens, ones = batch["answer"][i].tolist()
        assert f"{m}:{tens}{ones}" == format_time(onset)
    assert (batch["features"][..., 8:].sum(1) <= 2).all()  # two runs: at most two starts per source


def test_offset_question_asks_where_the_source_falls_silent_for_good():
    batch = probe.draw(16, _args(runs=2, ask="offset"), torch.Generator().manual_seed(0))
    for i in range(16):
        k, offset = int(batch["asked"][i]), float(batch["at"][i])
        sounding = batch["features"][i, :, k]
        last = int(torch.nonzero(sounding)[-1])  # the last token where the asked source sounds
        assert abs(float(batch["times"][last]) + probe.STEP_S / 2 - offset) <= probe.STEP_S
        assert sounding[last + 1 :].sum() == 0
        m, _, tens, ones = batch["answer"][i].tolist()
        assert f"{m}:{tens}{ones}" == format_time(offset)


class ScriptedLM(torch.nn.Module):
    """Stands in for the LLM in ``hit_at_3s``: its greedy pick at answer step ``j`` is ``script[:, j]``."""

    def __init__(self, script: torch.Tensor, vocab: int, hidden: int = 8):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.emb = torch.nn.Embedding(vocab, hidden)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds):
        logits = torch.zeros(*inputs_embeds.shape[:2], self.vocab)
        logits[torch.arange(len(self.script)), -1, self.script[:, self.calls]] = 1.0
        self.calls += 1
        return probe.argparse.Namespace(logits=logits)


def _scored(args, onsets, script) -> tuple[float, int]:
    batch = probe.draw(len(onsets), args, torch.Generator().manual_seed(0))
    batch["at"] = torch.tensor(onsets)
    llm = ScriptedLM(torch.tensor(script), probe.TIME0(args) + probe.n_seconds(args))
    proj, gates = torch.nn.Linear(2 * args.sources, 8), torch.ones(3, 8)
    return probe.hit_at_3s(batch, args, llm, proj, gates), llm.calls


def test_hit_at_3s_scores_digits_by_hand():
    c = probe.COLON
    script = [[0, c, 1, 2],  # 0:12 for 10.0 s: 2 s off, a hit
              [0, c, 1, 5],  # 0:15 for 10.0 s: 5 s off, a miss
              [0, 3, 1, 0],  # no colon: unreadable, a miss even though "0?10" would be right
              [1, c, 0, 2],  # 1:02 for 60.5 s: a hit across the minute
              [0, c, 0, 3]]  # 0:03 for 0.0 s: exactly 3 s, a hit (the bound is inclusive)
    hit, calls = _scored(_args(layout="after"), [10.0, 10.0, 10.0, 60.5, 0.0], script)
    assert hit == 100.0 * 3 / 5 and calls == 4  # one greedy step per answer token


def test_hit_at_3s_scores_time_tokens_by_hand():
    args = _args(answer="token", layout="after")
    t0 = probe.TIME0(args)
    # second 12 for 10.0 s (hit), second 14 (4 s off, miss), a word token below the time tokens (miss)
    hit, calls = _scored(args, [10.0, 10.0, 2.0], [[t0 + 12], [t0 + 14], [probe.COLON + 1]])
    assert hit == 100.0 / 3 and calls == 1


def test_must_hit_at_3s_parses_the_generated_text():
    class Model:
        def eval(self):
            pass

        train = eval

        def generate(self, encoding, questions, max_new_tokens):
            assert encoding.features.shape[:2] == (3, 100) and len(questions) == 3
            return [["0:12"], ["12 seconds"], ["soon"]]

        def split_answer(self, text):
            return text, None, None

        encoder = probe.argparse.Namespace(hidden_size=32)

    batch = probe.draw(3, _args(), torch.Generator().manual_seed(0))
    batch["at"] = torch.tensor([10.0, 20.0, 12.0])
    # 0:12 for 10 s hits, "12 seconds" parses but is 8 s off, "soon" does not parse
    assert probe.must_hit_at_3s(batch, Model(), ["q"] * 3) == 100.0 / 3


@pytest.mark.parametrize("model, steps, drop", [("abstract", 30, 1.0), ("must", 9, 0.3)])
def test_a_short_run_lowers_the_loss(model, steps, drop, capsys):
    probe.main(["--model", model, "--steps", str(steps), "--batch", "4", "--eval-every", str(steps // 3),
                "--tokens", "20"])
    out = capsys.readouterr().out
    assert f"model={model} layout=both answer=digits" in out.splitlines()[0]
    logged = [(float(lo), float(h)) for lo, h in re.findall(r"loss ([0-9.]+)  hit@3s +([0-9.]+)", out)]
    assert len(logged) == 3
    losses = [lo for lo, _ in logged]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - drop, losses
    assert float(re.search(r"final_hit_at_3s=([0-9.]+)", out).group(1)) == logged[-1][1]


def test_time_token_answer_and_source_last_layout():
    args = _args(answer="token", source_last=True, layers=1, hidden=32, heads=2, layout="after")
    batch = probe.draw(8, args, torch.Generator().manual_seed(0))
    # the answer is one token: the first time token plus the onset's whole second
    assert batch["answer"].shape == (8, 1)
    assert batch["answer"][:, 0].tolist() == [probe.TIME0(args) + round(t) for t in batch["at"].tolist()]
    llm, proj, gates = probe.build(args)
    assert llm.config.tie_word_embeddings and llm.config.vocab_size == probe.TIME0(args) + probe.n_seconds(args)
    emb = llm.get_input_embeddings()
    seq = probe.sequence(batch, args, llm, proj, gates)
    # ... and the question's last position is the asked source, right before the answer
    assert torch.allclose(seq[:, -2], emb(probe.COLON + 1 + batch["asked"]))
    audio = seq[:, 1:1 + args.tokens]
    times = probe.TIME0(args) + batch["times"].round().long()
    assert torch.allclose(audio - proj(batch["features"]), emb(times).expand_as(audio), atol=1e-6)


def test_abstract_model_size_options():
    llm, proj, gates = probe.build(_args(layers=2, hidden=64, heads=8))
    cfg = llm.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 8, 4)
    assert cfg.intermediate_size == 128 and proj.out_features == 64 and gates.shape == (3, 64)
    default = probe.build(_args(layers=None, hidden=None, heads=None))[0].config
    assert (default.num_hidden_layers, default.hidden_size, default.num_attention_heads) == (3, 128, 4)


@pytest.mark.parametrize("layout, question_at", [("after", [21]), ("before", [1]), ("both", [1, 25])])
def test_layout_places_the_question_around_the_audio(layout, question_at):
    """bos, then audio (20 tokens) and the 4-token question in ``--layout``'s order, then the 4 answer tokens."""
    args = _args(tokens=20, layout=layout, layers=1, hidden=32, heads=2)
    batch = probe.draw(2, args, torch.Generator().manual_seed(0))
    llm, proj, gates = probe.build(args)
    seq = probe.sequence(batch, args, llm, proj, gates)
    emb = llm.get_input_embeddings()
    when = probe.COLON + args.sources + 1
    question = emb(torch.stack([torch.full((2,), when), probe.COLON + 1 + batch["asked"],
                                torch.full((2,), when + 1), torch.full((2,), when + 2)], 1))
    assert seq.shape[1] == 1 + 20 + 4 * len(question_at) + 4
    for at in question_at:
        assert torch.allclose(seq[:, at:at + 4], question)
    audio_at = 1 if layout == "after" else 5
    # each audio token: its features' projection plus its time's M:SS digits (minutes, tens, ones) through the gates
    slots = torch.tensor([[int(c) for c in format_time(t) if c != ":"] for t in batch["times"].tolist()])
    audio = proj(batch["features"]) + (emb(slots) * gates).sum(1)
    assert torch.allclose(seq[:, audio_at:audio_at + 20], audio)
    assert torch.allclose(seq[:, -4:], emb(batch["answer"]))
