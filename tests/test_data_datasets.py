"""The stages' datasets (targets, determinism, workers, resumable draws) and ``must synth`` on disk."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from must.data.config import DataConfig
from must.data.datasets import (
    CaptionTracks,
    EvalTracks,
    QATracks,
    Stage1Tracks,
    collate,
    synthetic_split,
    synthetic_track,
)
from must.data.real import load_mustbench
from must.data.synth import SOURCE_NAMES
from must.data.types import MUSTBENCH_COLUMNS

CFG = DataConfig(
    min_seconds=8.0, max_seconds=12.0, train_tracks=4, val_tracks=2, test_tracks=2, questions_per_track=3
)


def test_stage1_items_are_the_tracks_targets():
    from must.data.targets import transition_curve

    ds = Stage1Tracks(CFG, "train", frame_rate=2.5, length=CFG.train_tracks)
    items = [ds[0], ds[1]]
    for i, it in enumerate(items):
        track = synthetic_track(CFG, "train", i)
        frames = int(np.ceil(track.duration * 2.5))
        assert np.array_equal(it["waveform"], track.audio) and it["sample_rate"] == CFG.sample_rate
        assert it["transition"].shape == (frames,) and it["activity"].shape == (frames, len(SOURCE_NAMES))
        assert torch.equal(it["transition"], torch.from_numpy(transition_curve(track, 2.5, CFG.transition_sigma_s)))
        assert it["mood"].shape[1] == 3 and it["boundaries"] == [t.time for t in track.transitions]
    batch = collate(items)
    assert batch["boundaries"] == [items[0]["boundaries"], items[1]["boundaries"]]
    assert [len(w) for w in batch["waveform"]] == [len(it["waveform"]) for it in items]  # whole, unpadded


def test_workers_give_the_same_items_as_the_main_process():
    ds = CaptionTracks(CFG, "train", CFG.train_tracks, ["Describe the track."])
    direct = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    got = [b for b in loader]
    assert [c for b in got for c in b["caption"]] == [d["caption"] for d in direct]
    assert np.array_equal(got[1]["waveform"][0], direct[2]["waveform"])
    assert direct[0]["caption"].startswith("[0:00-")


def test_question_draws_follow_the_sample_position():
    ds = QATracks(CFG, "train", CFG.train_tracks, k=2, tasks=["TSG", "LTR", "MTR"], type_weights={}, seed=3)
    first = [q.id for q in ds[(7, 1)]["qas"]]
    ds[(0, 2)], ds[3]  # other reads in between do not change what position 7 asks
    assert [q.id for q in ds[(7, 1)]["qas"]] == first and len(first) == 2
    assert all(q.task in {"TSG", "LTR", "MTR"} and q.track_id == ds[(7, 1)]["id"] for q in ds[(7, 1)]["qas"])


def test_eval_tracks_match_the_fixed_split():
    tracks, qas = synthetic_split(CFG, "test")
    ds = EvalTracks(CFG, "test", CFG.test_tracks)
    item_qas = [q for i in range(len(ds)) for q in ds[i]["qas"]]
    assert item_qas == qas
    assert all(len(ds[i]["qas"]) <= CFG.questions_per_track for i in range(len(ds)))
    assert np.array_equal(ds[0]["waveform"], tracks[0].audio)


def test_must_synth_writes_audio_labels_and_parquet(tmp_path):
    import argparse

    from must.cli import COMMANDS

    add, handler = COMMANDS["synth"]
    parser = argparse.ArgumentParser()
    add(parser)
    args = parser.parse_args(
        ["--tracks", "3", "--out", str(tmp_path), "--seed", "7", "--min-seconds", "8", "--max-seconds", "10"]
    )
    assert handler(args) == 0
    df = pd.read_parquet(tmp_path / "mustbench.parquet")
    assert list(df.columns) == list(MUSTBENCH_COLUMNS) + ["duration"]
    split_of = df.groupby("track_id")["split"].nunique()
    assert (split_of == 1).all()  # no track in two splits
    audio = sorted(p.stem for p in (tmp_path / "audio").glob("*.flac"))
    labels = sorted(p.stem for p in (tmp_path / "labels").glob("*.json"))
    assert len(audio) == 3 and audio == labels and set(df["track_id"]) <= set(audio)
    lab = json.loads((tmp_path / "labels" / f"{audio[0]}.json").read_text())
    info = sf.info(str(tmp_path / "audio" / f"{audio[0]}.flac"))
    assert info.samplerate == 16000 and info.frames / 16000 == pytest.approx(lab["duration"], abs=1e-3)
    assert {"sources", "transitions", "arousal", "captions", "split"} <= set(lab)
    # the written test track is the one the on-the-fly test split renders
    cfg = DataConfig(min_seconds=8, max_seconds=10, seed=7, test_tracks=1)
    (track,), _ = synthetic_split(cfg, "test")
    written, _ = sf.read(str(tmp_path / "audio" / f"{track.id}.flac"), dtype="float32")
    assert np.abs(written - track.audio).max() < 1e-4
    # and the folder reads back as MusTBench data
    qas = load_mustbench(tmp_path / "mustbench.parquet", tmp_path / "audio")
    assert len(qas) == len(df) and all(q.duration > 7.9 for q in qas)


def test_labels_round_trip_through_disk(tmp_path):
    from must.data.export import read_track_labels, write_synthetic

    write_synthetic(tmp_path, 1, seed=2, min_s=8, max_s=10, progress=False)
    (path,) = (tmp_path / "labels").glob("*.json")
    back = read_track_labels(path, audio=True)
    cfg = DataConfig(seed=2, min_seconds=8, max_seconds=10)
    fresh = synthetic_track(cfg, "train", 0)  # one track is a training track
    assert back.id == fresh.id and back.duration == fresh.duration
    assert back.sources == {k: [tuple(r) for r in v] for k, v in fresh.sources.items()}
    assert (
        back.transitions == fresh.transitions
        and back.arousal == fresh.arousal
        and back.captions == fresh.captions
    )
    assert np.abs(back.audio - fresh.audio).max() < 1e-4


def test_bad_data_config_names_the_key():
    from must.data.datasets import RealQATracks
    from must.errors import ConfigError

    with pytest.raises(ConfigError, match=r"key .data.tasks\[1\].: .XYZ. is not one of: TSG, LTR, TAD, GTO, MTR"):
        EvalTracks(DataConfig(tasks=["TSG", "XYZ"]), "test", 1)
    with pytest.raises(ConfigError, match="data.min_seconds"):
        Stage1Tracks(DataConfig(min_seconds=30, max_seconds=20), "train", 2.5, 1)
    with pytest.raises(ConfigError, match="data.renderer"):
        CaptionTracks(DataConfig(renderer="fluid"), "train", 1, ["p"])
    with pytest.raises(ConfigError, match="data.track_cache_bytes"):
        QATracks(DataConfig(track_cache_bytes=-1), "train", 1, 2, ["TSG"], {})
    with pytest.raises(ConfigError, match="data.parquet"):
        RealQATracks(DataConfig(source="mustbench"), "test", 0, ["TSG"])


def test_real_tracks_read_the_fixture():
    from must.data.datasets import RealQATracks
    from tests._fixtures import shared_fixture

    parquet = shared_fixture("mustbench_demo", "mustbench_demo.parquet")
    cfg = DataConfig(source="mustbench", parquet=str(parquet))
    ds = RealQATracks(cfg, "test", 0, ["MTR"])
    item = ds[0]
    assert len(ds) == 1 and item["id"] == "1023323" and [q.id for q in item["qas"]] == ["mtr-1023323"]
    assert item["sample_rate"] == 16000 and len(item["waveform"]) / 16000 == pytest.approx(97.4, abs=0.1)
    assert ds.broken == 0


def test_labelled_folder_errors(tmp_path):
    from must.data.export import load_labelled_folder, read_track_labels
    from must.errors import MustError

    with pytest.raises(MustError, match="no label files"):
        load_labelled_folder(tmp_path)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.json").write_text("{not json")
    with pytest.raises(MustError, match="cannot read track labels .*x.json"):
        read_track_labels(tmp_path / "labels" / "x.json")
