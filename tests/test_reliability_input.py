"""Bad input, each case a clear message naming the file, row or key (never a traceback), nothing lost.

Recipe cases go through the CLI (exit code 2, message on stderr); data and model cases through the
loaders the stages and ``must eval`` call.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from must.cli import main
from must.data.real import SkipBroken, load_audio, load_mustbench
from must.data.types import MUSTBENCH_COLUMNS
from must.errors import MustError

FIXTURE = Path("/work/shared/fixtures/mustbench_demo")
if not FIXTURE.is_dir():
    FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mustbench_demo"
MP3 = FIXTURE / "1023323.mp3"

STAGES = """
stages:
  - name: a
    kind: tests._stages:Producer
    trainer: {max_steps: 2, enable_progress_bar: false}
  - name: b
    kind: tests._stages:Consumer
    init_from: a
"""


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body,expected", [
    ("name: x\nmodle: {}\n" + STAGES, ["r.yaml", "modle", "did you mean 'model'"]),
    ("name: x\n" + STAGES.replace("max_steps: 2", "max_steps: ten"), ["stages[0].trainer.max_steps", "ten"]),
    ("name: x\n" + STAGES.replace("init_from: a", "init_from: b"), ["stages[1].init_from", "must name an earlier stage"]),
    ("name: x\n" + STAGES.replace("init_from: a", "init_from: c"), ["stages[1].init_from", "names no earlier stage"]),
    ("name: x\n" + STAGES.replace("kind: tests._stages:Producer", "kind: tests._stages:Producer\n    init_from: b"),
     ["stages[0].init_from", "runs after"]),
    ("name: x\n" + STAGES.replace("init_from: a", "init_from: /no/such/model"), ["stages[1].init_from", "/no/such/model"]),
    ("name: x\n" + STAGES.replace("trainer: {max_steps: 2", "options: {lr: fast}\n    trainer: {max_steps: 2"),
     ["stages[0].options.lr", "fast"]),
])
def test_bad_recipe_names_the_key_and_exits_2(tmp_path, capsys, body, expected):
    assert main(["validate", str(_recipe(tmp_path, body))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in expected:
        assert part in err, (part, err)


def _wav(path: Path, data: np.ndarray, sr: int = 16000, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing", "audio file not found"),
    ("truncated", "is truncated: its header says 97.4 s"),
    ("not_audio", "cannot read audio file"),
    ("zero_length", "is empty (0 samples)"),
    ("nan", "contains NaN or infinite samples"),
])
def test_bad_audio_names_the_file(tmp_path, case, expected):
    path = tmp_path / f"{case}.mp3"
    if case == "truncated":
        path.write_bytes(MP3.read_bytes()[:200_000])  # a download cut off after 5 % of the file
    elif case == "not_audio":
        path.write_text("<html>404 not found</html>")
    elif case == "zero_length":
        path = _wav(tmp_path / f"{case}.wav", np.zeros(0, dtype=np.float32))
    elif case == "nan":
        path = _wav(tmp_path / f"{case}.wav", np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32))
    with pytest.raises(MustError) as info:
        load_audio(path)
    assert expected in str(info.value) and path.name in str(info.value)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_any_sample_rate_loads_at_the_model_rate(tmp_path, sr):
    t = np.arange(int(2.5 * sr)) / sr
    out = load_audio(_wav(tmp_path / "tone.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr), 16000)
    assert len(out) == 40000 and np.isfinite(out).all()


def _parquet(folder: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    shutil.copy(MP3, folder / "t1.mp3")
    df = pd.DataFrame(rows).drop(columns=list(drop))
    path = folder / "bench.parquet"
    df.to_parquet(path)
    return path


def _row(**kw) -> dict:
    row = {"id": "q1", "track_id": "t1", "task": "TSG", "category": "onset", "qa_type": "onset",
           "question": "When does the piano enter?", "answer": "0:12", "answers": ["0:12"], "split": "test"}
    return {**row, **kw}


@pytest.mark.parametrize("rows,drop,expected", [
    ([_row()], ("answers", "qa_type"), ["missing column(s) qa_type, answers"]),
    ([_row(), _row(id="q2", task="XYZ")], (), ["unknown task in 1 row(s): q2 ('XYZ')"]),
    ([_row(), _row(id="q7", answer="23:76", answers=["23:76"])], (), ["unparsable reference answer", "id q7", "23:76"]),
    ([_row(id="q3", task="LTR", answer="Z", answers=["Z"])], (), ["id q3", "LTR 'Z'"]),
    ([_row(track_id="t9")], (), ["no audio", "t9"]),
])
def test_bad_parquet_names_the_column_or_row(tmp_path, rows, drop, expected):
    path = _parquet(tmp_path, rows, drop)
    with pytest.raises(MustError) as info:
        load_mustbench(path)
    msg = str(info.value)
    assert "bench.parquet" in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_the_real_fixture_still_loads():
    qas = load_mustbench(FIXTURE / "mustbench_demo.parquet")
    assert len(qas) == 1 and set(MUSTBENCH_COLUMNS) >= {"answers"}


class _Files:
    """A dataset of audio paths read with load_audio (the shape of a real-data training set)."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_audio(self.paths[i])


def test_broken_audio_is_skipped_counted_and_too_many_stop(tmp_path, capsys):
    good = [_wav(tmp_path / f"g{i}.wav", np.full(1600, 0.1 * (i + 1), dtype=np.float32)) for i in range(3)]
    bad = tmp_path / "broken.mp3"
    bad.write_text("not audio")
    data = SkipBroken(_Files([good[0], bad, good[1], good[2]]), max_fraction=0.3)
    items = [data[i] for i in range(len(data))]
    assert float(items[1][0]) == pytest.approx(0.2, abs=1e-6)  # the broken item was replaced by the next good one
    assert list(data.failures) == [1] and "broken.mp3" in data.failures[1]
    assert "skipped a broken audio file (1 so far)" in capsys.readouterr().out
    strict = SkipBroken(_Files([good[0], bad, good[1], good[2]]), max_fraction=0.01)  # 1 of 4 > 1 %
    strict[0]
    with pytest.raises(MustError, match=r"1 of 4 audio files failed to load \(more than 1%\): stopping.*broken.mp3"):
        strict[1]


# ----------------------------------------------------------------------------------------- model folders


def _tiny_llm_folder(path: Path, vocab_cut: int = 0) -> Path:
    from must.models.config import HostConfig, LLMConfig
    from must.models.llm import build_llm

    llm, tok = build_llm(LLMConfig(hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32), HostConfig())
    if vocab_cut:
        llm.resize_token_embeddings(len(tok) - vocab_cut)
    llm.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _build(llm_source: str, host: str = "none"):
    from must.models.config import ModelConfig
    from must.models.lalm import MusicLALM

    cfg = ModelConfig()
    cfg.llm.source, cfg.host.kind = llm_source, host
    return MusicLALM.from_config(cfg)


def test_missing_llm_folder_is_named(tmp_path):
    with pytest.raises(MustError, match="LLM folder not found: /no/such/llm"):
        _build("/no/such/llm")


def test_wrong_architecture_is_named(tmp_path):
    from transformers import AutoConfig, AutoModel

    folder = tmp_path / "hubert"
    AutoModel.from_config(AutoConfig.for_model("hubert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, conv_dim=[16] * 7)).save_pretrained(folder)
    with pytest.raises(MustError, match=r"hubert.* holds a 'hubert' model, which is not a causal language model"):
        _build(str(folder))
    llm = _tiny_llm_folder(tmp_path / "qwen2")
    with pytest.raises(MustError, match=r"holds a 'qwen2' model; model.host.kind qwen2_5_omni needs 'qwen2_5_omni_thinker'"):
        _build(str(llm), host="qwen2_5_omni")


def test_tokenizer_vocabulary_mismatch_is_named(tmp_path):
    folder = _tiny_llm_folder(tmp_path / "cut", vocab_cut=10)
    with pytest.raises(MustError, match=r"cut: the tokenizer has \d+ tokens but the model's embedding table has"):
        _build(str(folder))


def test_a_model_folder_without_config_is_named(tmp_path):
    from must.models.lalm import MusicLALM

    (tmp_path / "empty").mkdir()
    with pytest.raises(MustError, match="not a must model folder"):
        MusicLALM.from_pretrained(tmp_path / "empty")
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "must_config.json").write_text(json.dumps({"format": "must-lalm", "version": 1, "model": {}}))
    with pytest.raises(MustError, match="incomplete|format"):
        MusicLALM.from_pretrained(tmp_path / "stage")
