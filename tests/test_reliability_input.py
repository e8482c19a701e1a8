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
from tests._fixtures import shared_fixture


def _mp3() -> Path:
    """The fixture's real 97.4 s MP3 (skips the test without ../shared)."""
    return shared_fixture("mustbench_demo", "1023323.mp3")


def _demo_parquet() -> str:
    """The fixture's one real MusTBench row (skips the test without ../shared)."""
    return str(shared_fixture("mustbench_demo", "mustbench_demo.parquet"))


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
        path.write_bytes(_mp3().read_bytes()[:200_000])  # a download cut off after 5 % of the file
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
    shutil.copy(_mp3(), folder / "t1.mp3")
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
    ([_row(), _row(id="q7", answer="23:76", answers=["23:76"])], (), ["unparsable or impossible reference", "id q7", "23:76"]),
    # parse_time alone read 16:48 (1008 s) and never saw 23:76
    ([_row(id="q8", answer="16:48–23:76", answers=["16:48–23:76"], duration=56.0)], (),
     ["id q8", "impossible time '23:76'"]),
    ([_row(id="q9", answer="16:48", answers=["16:48"], duration=56.0)], (),
     ["id q9", "16:48 = 1008 s is past the end of the 56.0 s track"]),
    # no duration column: the track's length comes from its audio (the fixture MP3, 97.4 s)
    ([_row(id="q10", task="MTR", answer="0:57–2:10", answers=["0:57–2:10"])], (),
     ["id q10", "2:10 = 130 s is past the end of the 97.4 s track"]),
    ([_row(track_id="../outside")], (), ["track_id leads outside the audio folder", "'../outside' (id q1)"]),
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
    qas = load_mustbench(_demo_parquet())
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


def test_a_track_id_cannot_read_outside_the_audio_folder(tmp_path):
    from must.data.real import find_audio

    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "outside.wav", np.zeros(1600, dtype=np.float32))  # a file the id points at
    with pytest.raises(MustError, match=r"track_id '../outside' leads outside the audio folder"):
        find_audio(tmp_path / "audio", "../outside")
    with pytest.raises(MustError, match="leads outside"):
        find_audio(tmp_path / "audio", str(tmp_path / "outside"))  # an absolute path too
    _wav(tmp_path / "audio" / "inside.wav", np.zeros(1600, dtype=np.float32))
    assert find_audio(tmp_path / "audio", "inside") == tmp_path / "audio" / "inside.wav"


def test_audio_shorter_than_its_row_says_is_flagged_naming_the_row(tmp_path, capsys):
    _wav(tmp_path / "t2.wav", np.zeros(16000, dtype=np.float32))  # 1 s of audio
    rows = [_row(duration=97.4), _row(id="q2", track_id="t2", answer="0:00", answers=["0:00"], duration=56.0)]
    qas = load_mustbench(_parquet(tmp_path, rows))
    err = capsys.readouterr().err
    assert "warning: " in err and "row id q2 says track t2 lasts 56.0 s" in err and "t2.wav is 1.0 s long" in err
    assert "t1" not in err  # the fixture's 97.4 s MP3 matches its row
    assert [qa.duration for qa in qas] == [97.4, 56.0]


# ----------------------------------------------------------------------------------------- predictions


def _predictions(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "preds.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_prediction_files_name_bad_bytes_and_duplicate_ids_by_line(tmp_path, capsys):
    refs = _demo_parquet()
    latin1 = _predictions(tmp_path, [b'{"id": "a", "prediction": "x"}', b'{"id": "b", "prediction": "x"}',
                                     '{"id": "mtr-1023323", "prediction": "0:57–1:12 café"}'.encode("latin-1", "replace")])
    assert main(["score", "--predictions", str(latin1), "--references", refs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "preds.jsonl:3: not UTF-8 text (byte 0xe9 at column 51)" in err and "Traceback" not in err
    dup = _predictions(tmp_path, [b'{"id": "mtr-1023323", "prediction": "0:00-0:10"}', b'{"id": "q", "prediction": "A"}',
                                  b'{"id": "mtr-1023323", "prediction": "0:57-1:12"}'])
    assert main(["score", "--predictions", str(dup), "--references", refs]) == 2
    err = capsys.readouterr().err
    assert "1 id(s) predicted more than once: mtr-1023323 (lines 1, 3)" in err


# ----------------------------------------------------------------------------------------- overrides, output_dir


def test_overrides_read_numbers_as_the_user_means_them(tmp_path):
    from must.config import load_recipe, stage_hash

    path = _recipe(tmp_path, "name: x\n" + STAGES)
    recipes = [load_recipe(path, [f"stages.a.options.lr={v}"]) for v in ("1e-3", "0.001", "1.0e-3")]
    assert [r.stages[0].options["lr"] for r in recipes] == [0.001, 0.001, 0.001]
    assert len({stage_hash(r, r.stages[0], None) for r in recipes}) == 1  # before: '1e-3' hashed as a string
    in_file = _recipe(tmp_path, "name: x\n" + STAGES.replace("trainer: {max_steps: 2", "options: {lr: 1e-3}\n    trainer: {max_steps: 2"))
    assert load_recipe(in_file).stages[0].options["lr"] == 0.001
    assert load_recipe(path, ["name=1e3x"]).name == "1e3x"  # not a number: stays text


@pytest.mark.parametrize("case", ["below_a_file", "proc", "read_only"])
def test_an_output_dir_that_cannot_be_created_is_one_error_line(tmp_path, capsys, monkeypatch, case):
    (tmp_path / "a_file").write_text("not a folder")
    out = {"below_a_file": tmp_path / "a_file" / "out", "proc": Path("/proc/must-test/out"),
           "read_only": tmp_path / "ro" / "out"}[case]
    if case == "read_only":  # what a read-only mount answers (tests may run as root, where chmod stops nothing)
        import errno

        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(str(tmp_path / "ro")):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    path = _recipe(tmp_path, f"name: x\noutput_dir: {out}\nlogger: {{kind: none}}\n" + STAGES)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: key 'output_dir': {out}: cannot create it"), err
    # /proc answers ENOENT or EACCES depending on the kernel and user: the line above is the check there
    reason = {"below_a_file": "a_file is a file, not a folder)", "read_only": "(Read-only file system)"}.get(case, "")
    assert err.endswith(reason)


# ----------------------------------------------------------------------------------------- saved model folders


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from must.models.lalm import MusicLALM
    from tests._tiny import TINY_MODEL

    folder = tmp_path_factory.mktemp("model") / "model"
    MusicLALM.from_config(TINY_MODEL).save_pretrained(folder)
    return folder


def _damaged(saved: Path, target: Path, case: str) -> tuple[Path, str]:
    shutil.copytree(saved, target)
    if case in ("must", "llm"):
        weights = target / ("must.safetensors" if case == "must" else "llm/model.safetensors")
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
        return weights, f"{weights} is truncated: its header promises"
    config = target / "llm" / "config.json"
    data = json.loads(config.read_text())
    data["vocab_size"] += 7
    config.write_text(json.dumps(data))
    return config, "embed_tokens.weight has"


@pytest.mark.parametrize("case", ["must", "llm", "vocabulary"])
def test_a_damaged_model_folder_is_one_error_naming_the_file(saved_model, tmp_path, capsys, case):
    folder = tmp_path / "model"
    _, expected = _damaged(saved_model, folder, case)
    refs = _demo_parquet()
    assert main(["eval", str(folder), "--data", refs, "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    # must validate finds it too, before any work, naming the recipe key
    path = _recipe(tmp_path, f"""
        name: x
        stages:
          - name: sft
            kind: sft
            init_from: {folder}
    """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'stages[0].init_from'" in err and expected in err


def test_validate_refuses_an_init_from_folder_that_is_no_model(tmp_path, capsys, saved_model):
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    shutil.copytree(saved_model, tmp_path / "runs" / "sft" / "model")
    path = _recipe(tmp_path, f"""
        name: x
        stages:
          - name: sft
            kind: sft
            init_from: {tmp_path / "runs" / "sft"}
    """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "key 'stages[0].init_from'" in err and "is not a model folder (no must_config.json)" in err
    assert f"did you mean {tmp_path / 'runs' / 'sft' / 'model'}?" in err
    path.write_text(path.read_text().replace("sft\n    \n", "sft\n").replace(str(tmp_path / "runs" / "sft"),
                                                                             str(tmp_path / "runs" / "sft" / "model")))
    assert main(["validate", str(path)]) == 0
    assert "# note:" not in capsys.readouterr().out  # built-in kinds import nothing of the user's


def test_validate_says_that_a_dotted_kind_runs_code(tmp_path, capsys):
    assert main(["validate", str(_recipe(tmp_path, "name: x\n" + STAGES))]) == 0
    out = capsys.readouterr().out
    assert "# note: stages[0].kind 'tests._stages:Producer' imports and runs module 'tests._stages'" in out
    assert "a dotted kind runs code" in out
