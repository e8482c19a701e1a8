"""Write synthetic tracks to disk: FLAC audio, JSON labels and a MusTBench-format parquet."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from must.data.config import DataConfig
from must.data.datasets import synthetic_qas, synthetic_track
from must.data.types import MUSTBENCH_COLUMNS, Track


def split_counts(n_tracks: int) -> dict[str, int]:
    """Tracks per split: 80/10/10 from 10 tracks on; with fewer, training gets the first track (so any
    ``n_tracks >= 1`` has one to train on), test the second, val the third, training the rest."""
    if n_tracks >= 10:
        n_test = n_val = round(0.1 * n_tracks)
    else:
        n_test = 1 if n_tracks >= 2 else 0
        n_val = 1 if n_tracks >= 3 else 0
    return {"train": n_tracks - n_test - n_val, "val": n_val, "test": n_test}


def remove_earlier_synth(out: Path) -> list[Path]:
    """Delete what an earlier :func:`write_synthetic` wrote in ``out`` (each ``labels/<id>.json``, its
    ``audio/<id>.flac``, ``mustbench.parquet``), so a smaller rerun leaves no stale tracks; other files stay."""
    removed = [p for p in sorted((out / "labels").glob("*.json"))]
    removed += [out / "audio" / f"{p.stem}.flac" for p in removed]
    removed += [out / "mustbench.parquet"]
    removed = [p for p in removed if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def track_labels(track: Track) -> dict[str, Any]:
    """Every label of a track as JSON-ready data (times in seconds; no audio)."""
    data = asdict(replace(track, audio=None))
    data.pop("audio")
    data["sources"] = {k: [list(map(float, run)) for run in v] for k, v in track.sources.items()}
    return data


def write_synthetic(
    out_dir: str | Path,
    n_tracks: int,
    seed: int = 0,
    min_s: float = 20.0,
    max_s: float = 60.0,
    sample_rate: int = 16000,
    cfg: DataConfig | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n_tracks`` synthetic tracks under ``out_dir`` and return the parquet's path.

    Layout: ``audio/<track_id>.flac`` (16-bit), ``labels/<track_id>.json``, ``mustbench.parquet`` (the
    benchmark's columns plus ``duration``; splits by track, 80/10/10). Track i of a split is the same
    track the on-the-fly datasets render for that (seed, split, i); the parquet holds every question the
    builders make (``cfg.questions_per_track`` applies only when ``cfg`` is given).
    """
    import pandas as pd
    import soundfile as sf
    from tqdm.auto import tqdm

    cfg = replace(
        cfg or DataConfig(),
        seed=seed,
        min_seconds=min_s,
        max_seconds=max_s,
        sample_rate=sample_rate,
        questions_per_track=(cfg.questions_per_track if cfg else 0),
    )
    out = Path(out_dir)
    remove_earlier_synth(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(split, i) for split, n in split_counts(n_tracks).items() for i in range(n)]
    for split, i in tqdm(jobs, desc="synth", unit="track", disable=not progress):
        track = synthetic_track(cfg, split, i)
        sf.write(out / "audio" / f"{track.id}.flac", track.audio, sample_rate, subtype="PCM_16")
        labels = track_labels(track) | {"split": split}
        (out / "labels" / f"{track.id}.json").write_text(json.dumps(labels, indent=1))
        rows += [qa.to_row() for qa in synthetic_qas(cfg, track, split, i)]
    df = pd.DataFrame(rows, columns=list(MUSTBENCH_COLUMNS) + ["duration"])
    path = out / "mustbench.parquet"
    df.to_parquet(path, index=False)
    return path


def read_track_labels(path: str | Path, audio: bool = False, sample_rate: int = 16000) -> Track:
    """A track from a ``labels/<id>.json`` written by :func:`write_synthetic` (audio loaded if asked)."""
    from must.data.real import find_audio, load_audio
    from must.data.types import ArousalSegment, Caption, Transition
    from must.errors import MustError

    path = Path(path)
    try:
        d = json.loads(path.read_text())
        track = Track(
            id=d["id"],
            duration=float(d["duration"]),
            sample_rate=sample_rate,
            sources={k: [tuple(run) for run in v] for k, v in d["sources"].items()},
            transitions=[Transition(**t) for t in d["transitions"]],
            arousal=[ArousalSegment(**a) for a in d["arousal"]],
            captions=[Caption(**c) for c in d["captions"]],
            meta=d.get("meta", {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MustError(f"cannot read track labels {path}: {exc}") from exc
    audio_path = find_audio(path.parent.parent / "audio", track.id)
    track.path = str(audio_path) if audio_path else None
    if audio:
        if audio_path is None:
            raise MustError(f"no audio for {track.id} in {path.parent.parent / 'audio'}")
        track.audio = load_audio(audio_path, sample_rate)
    return track


def load_labelled_folder(folder: str | Path, audio: bool = False, sample_rate: int = 16000) -> list[Track]:
    """Every track of a folder written by :func:`write_synthetic` (``labels/*.json``), sorted by id."""
    from must.errors import MustError

    paths = sorted((Path(folder) / "labels").glob("*.json"))
    if not paths:
        raise MustError(f"no label files in {Path(folder) / 'labels'}")
    return [read_track_labels(p, audio, sample_rate) for p in paths]
