"""Hugging Face Hub ids wherever a recipe names a model folder, read from the local Hugging Face cache.

``model.llm.source: Qwen/Qwen2-Audio-7B-Instruct`` (or ``model.encoder.backbone: m-a-p/MERT-v1-95M``)
names the snapshot that ``hf download`` put in the Hugging Face cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), resolved with ``huggingface_hub.snapshot_download(...,
local_files_only=True)``. must never downloads weights itself: a recipe launched on a cluster node
should not start pulling 15 GB, and most such nodes cannot reach the Hub anyway. A missing id is a
:class:`~must.errors.MustError` giving the command that fetches it on a connected machine.

A value that is an existing path is a folder, whatever it looks like; only a missing ``org/name`` is
looked up as a Hub id. Trust rules are unchanged: a resolved folder is an ordinary local folder, and
its shipped code runs only when the recipe's ``trust_remote_code`` says so.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from must.errors import MustError

#: ``org/name`` as the Hub spells repository ids (no leading dot, no third part).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.][A-Za-z0-9_.-]{0,95}$")


def hub_cache() -> Path:
    """The Hugging Face cache folder this process reads, from the environment at call time (not import time,
    so a test or a wrapper script may set ``HF_HUB_CACHE`` after ``huggingface_hub`` was imported)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def is_repo_id(value: str) -> bool:
    """Whether ``value`` reads as a Hub repository id (``org/name``) rather than a path."""
    return bool(_REPO_ID.match(value)) and ".." not in value


def missing_message(repo_id: str, key: str) -> str:
    """What to tell a user whose ``key`` names ``repo_id`` that is neither a folder nor in the cache."""
    return (
        f"{key}: '{repo_id}' is no local folder, and as a Hugging Face Hub id it is not in the Hugging Face "
        f"cache at {hub_cache()} (must reads Hub models from that cache only, it never downloads them). "
        f"On a machine with internet, fetch it with `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`) and copy the cache here, pointing HF_HUB_CACHE (or HF_HOME) at it; "
        f"or download it to a folder (`hf download {repo_id} --local-dir DIR`) and "
        + (f"set {key}=DIR" if "." in key else f"give DIR as {key}")
    )


def resolve_folder(value: str | Path, key: str) -> Path:
    """The local folder ``value`` names: an existing path as is, a Hub id ``org/name`` as its cached snapshot
    (the ``refs/main`` one). A path that does not exist and is no Hub id comes back unchanged, for the
    caller's own "not found" message; a Hub id that is not cached is a MustError naming ``key``."""
    text = str(value)
    path = Path(text).expanduser()
    if path.exists() or not is_repo_id(text):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, cache_dir=str(hub_cache()), local_files_only=True))
    except LocalEntryNotFoundError:
        raise MustError(missing_message(text, key)) from None


def resolve_model_config(cfg):
    """A copy of a :class:`~must.models.config.ModelConfig` whose folder-naming fields (``llm.source``,
    ``encoder.backbone``) are local folders; presets (``tiny``, ``builtin``, an HF model type) stay as they are.
    The caller keeps the original for saving, so a saved model records the Hub id the user wrote."""
    llm, enc = cfg.llm, cfg.encoder
    if is_repo_id(llm.source):
        llm = dataclasses.replace(llm, source=str(resolve_folder(llm.source, "model.llm.source")))
    if is_repo_id(enc.backbone):
        enc = dataclasses.replace(enc, backbone=str(resolve_folder(enc.backbone, "model.encoder.backbone")))
    return dataclasses.replace(cfg, llm=llm, encoder=enc)
