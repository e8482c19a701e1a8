"""benchmarks/tsg_probe.py: the abstract clips are what its docstring says, and both modes run."""

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
                                       "features": "onset", "answer": "digits", "source_last": False, **kw})


def test_clip_flags_the_first_onset_and_answers_it():
    batch = probe.draw(16, _args(runs=2), torch.Generator().manual_seed(0))
    assert batch["features"].shape == (16, 100, 16)
    for i in range(16):
        k, onset = int(batch["asked"][i]), float(batch["onset"][i])
        sounding, starts = batch["features"][i, :, k], batch["features"][i, :, 8 + k]
        first = int(torch.nonzero(starts)[0])  # the first token flagged as a start of the asked source
        assert abs(float(batch["times"][first]) - onset) <= probe.STEP_S  # ... is at its first onset
        assert sounding[:first].sum() == 0 and sounding[first] == 1
        m, _, tens, ones = batch["answer"][i].tolist()
        assert f"{m}:{tens}{ones}" == format_time(onset)
    assert (batch["features"][..., 8:].sum(1) <= 2).all()  # two runs: at most two starts per source


@pytest.mark.parametrize("model", ["abstract", "must"])
def test_probe_runs_and_reports_hit_at_3s(model, capsys):
    probe.main(["--model", model, "--steps", "2", "--batch", "4", "--eval-every", "2", "--tokens", "20"])
    out = capsys.readouterr().out
    hit = float(re.search(r"final_hit_at_3s=([0-9.]+)", out).group(1))
    assert 0.0 <= hit <= 100.0 and f"model={model}" in out


def test_time_token_answer_and_source_last_layout():
    args = _args(answer="token", source_last=True, layers=1, hidden=32, heads=2, layout="after")
    batch = probe.draw(8, args, torch.Generator().manual_seed(0))
    # the answer is one token: the first time token plus the onset's whole second
    assert batch["answer"].shape == (8, 1)
    assert batch["answer"][:, 0].tolist() == [probe.TIME0(args) + round(t) for t in batch["onset"].tolist()]
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
