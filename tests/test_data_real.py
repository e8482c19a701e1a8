"""Real data: the MusTBench fixture loads at its real duration; every bad input gives its named error."""


import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from must.data.real import MustBenchDataset, load_audio, load_mustbench, resample
from must.errors import MustError
from tests._fixtures import DEMO as FIXTURE
from tests._fixtures import shared_fixture

PARQUET = FIXTURE / "mustbench_demo.parquet"


@pytest.fixture(scope="module")
def fixture_audio():
    shared_fixture("mustbench_demo", "mustbench_demo.parquet")
    return load_audio(shared_fixture("mustbench_demo", "1023323.mp3"), 16000)


def test_real_fixture_loads_whole_at_its_real_duration(fixture_audio):
    assert fixture_audio.dtype == np.float32 and fixture_audio.ndim == 1
    assert len(fixture_audio) / 16000 == pytest.approx(97.43, abs=0.05)
    assert np.isfinite(fixture_audio).all() and 0.05 < np.abs(fixture_audio).max() <= 1.5


def test_load_mustbench_fixture(fixture_audio):
    qas = load_mustbench(PARQUET, FIXTURE)
    assert len(qas) == 1
    qa = qas[0]
    assert (qa.id, qa.track_id, qa.task, qa.split) == ("mtr-1023323", "1023323", "MTR", "test")
    assert qa.answer == "0:57\u20131:12" and qa.answers == ["0:57\u20131:12"]
    assert qa.category is None and qa.qa_type is None
    assert qa.duration == pytest.approx(97.43, abs=0.05)
    item = MustBenchDataset(qas, FIXTURE, 16000)[0]
    assert item["track_id"] == "1023323" and item["qas"] == qas
    assert item["waveform"].shape[0] == len(fixture_audio)


def test_resample_keeps_pitch_and_length():
    sr_in, sr_out = 44100, 16000
    t = np.arange(sr_in) / sr_in
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert len(y) == sr_out
    assert np.argmax(np.abs(np.fft.rfft(y))) == 1000  # 1 Hz bins over one second
    assert np.abs(y).max() == pytest.approx(1.0, abs=0.02)


def test_stereo_any_rate_to_mono(tmp_path):
    sr = 22050
    left = np.full(sr, 0.5, np.float32)
    stereo = np.stack([left, -left * 0.2], axis=1)
    for ext in ("wav", "flac", "ogg"):
        path = tmp_path / f"s.{ext}"
        sf.write(path, stereo, sr)
        y = load_audio(path, 16000)
        assert len(y) == 16000
        assert np.median(y) == pytest.approx(0.2, abs=0.03)


def _parquet(tmp_path, **changes):
    row = {
        "id": "q1",
        "track_id": "t1",
        "task": "TSG",
        "category": "drums",
        "qa_type": "onset",
        "question": "When?",
        "answer": "0:05",
        "answers": ["0:05"],
        "split": "test",
    }
    row.update(changes)
    df = pd.DataFrame([row]).drop(columns=[k for k, v in changes.items() if v is _DROP])
    path = tmp_path / "bench.parquet"
    df.to_parquet(path)
    return path


_DROP = object()


def _wav(path, seconds=1.0, value=0.1):
    sf.write(path, np.full(int(16000 * seconds), value, np.float32), 16000)


def test_bad_parquet_inputs(tmp_path):
    _wav(tmp_path / "t1.wav", seconds=6.0)  # long enough for its reference 0:05 (a time past the end is refused)
    with pytest.raises(MustError, match="not found"):
        load_mustbench(tmp_path / "nope.parquet", tmp_path)
    with pytest.raises(MustError, match="missing column.*answers"):
        load_mustbench(_parquet(tmp_path, answers=_DROP), tmp_path)
    with pytest.raises(MustError, match="unknown task.*q1.*'XYZ'"):
        load_mustbench(_parquet(tmp_path, task="XYZ"), tmp_path)
    qas = load_mustbench(_parquet(tmp_path), tmp_path)
    assert qas[0].duration == pytest.approx(6.0) and qas[0].answers == ["0:05"]


def test_missing_audio_lists_the_ids(tmp_path):
    df = pd.DataFrame(
        [
            {
                "id": f"q{i}",
                "track_id": f"t{i}",
                "task": "TSG",
                "category": None,
                "qa_type": "onset",
                "question": "?",
                "answer": "0:01",
                "answers": ["0:01"],
                "split": "test",
            }
            for i in range(4)
        ]
    )
    df.to_parquet(tmp_path / "b.parquet")
    _wav(tmp_path / "t0.mp3".replace(".mp3", ".wav"))
    _wav(tmp_path / "t2.flac".replace(".flac", ".wav"))
    with pytest.raises(MustError, match=r"2 track id\(s\): t1, t3"):
        load_mustbench(tmp_path / "b.parquet", tmp_path)


def test_unreadable_empty_nan_audio_name_the_file(tmp_path):
    bad = tmp_path / "t1.wav"
    bad.write_bytes(b"this is not audio at all")
    with pytest.raises(MustError, match="cannot read audio file .*t1.wav"):
        load_audio(bad)
    with pytest.raises(MustError, match="cannot read audio file .*t1.wav"):
        load_mustbench(_parquet(tmp_path), tmp_path)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(MustError, match="empty.wav is empty"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    x = np.zeros(1600, np.float32)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(MustError, match="nan.wav contains NaN"):
        load_audio(nan)
    with pytest.raises(MustError, match="not found: .*missing.wav"):
        load_audio(tmp_path / "missing.wav")
