"""A saved model folder checked before it is loaded, and loaded with every failure named.

Loading a cut-off ``must.safetensors`` or ``llm/model.safetensors`` (an interrupted copy or download) or an
LLM whose config and weights disagree on the vocabulary raised a library traceback that named no file.
These checks read only the safetensors headers (a few kB), so ``must validate`` can run them on every
``init_from`` folder before any work.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from must.errors import MustError

#: A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


def check_safetensors(path: Path) -> dict[str, Any]:
    """The header (tensor name -> dtype, shape, data_offsets) of a safetensors file, after checking that the file
    holds every byte the header promises; MustError naming the file otherwise."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 0 or length > min(size - 8, _MAX_HEADER):
            raise MustError(f"{path} is truncated or not a safetensors file ({size} bytes, no complete header); "
                            "copy or save it again")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise MustError(f"{path}: its safetensors header is not valid JSON (a damaged file); copy it again") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size < 8 + length + end:
        raise MustError(f"{path} is truncated: its header promises {8 + length + end} bytes, the file has {size} "
                        "(an interrupted copy or download?); copy or save it again")
    return header


def check_saved_model(folder: str | Path) -> None:
    """MustError naming the file when ``folder`` is not a complete MusicLALM folder: no or a bad
    ``must_config.json``, a truncated safetensors file, an LLM whose embedding rows differ from its config's
    ``vocab_size``."""
    folder = Path(folder)
    meta = folder / "must_config.json"
    if not meta.is_file():
        nested = folder / "model" / "must_config.json"
        hint = f"; did you mean {folder / 'model'}?" if nested.is_file() else ""
        raise MustError(f"{folder} is not a model folder (no must_config.json): give a folder a stage saved "
                        f"(OUTPUT_DIR/<stage>/model) or MusicLALM.save_pretrained wrote{hint}")
    try:
        fmt = json.loads(meta.read_text()).get("format")
    except (ValueError, AttributeError):
        raise MustError(f"{meta} is not valid JSON") from None
    if fmt != "must-lalm":
        raise MustError(f"{meta} has format {fmt!r}, expected 'must-lalm'")
    headers = {path: check_safetensors(path) for path in sorted(folder.rglob("*.safetensors"))}
    _check_vocabulary(folder / "llm", {p: h for p, h in headers.items() if p.parent == folder / "llm"})


def _check_vocabulary(llm_dir: Path, headers: dict[Path, dict]) -> None:
    """The LLM's token-embedding rows must equal its config's ``vocab_size`` (else transformers stops mid-load)."""
    config_file = llm_dir / "config.json"
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        raise MustError(f"{config_file} is not valid JSON") from None
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    for path, header in headers.items():
        for name, tensor in header.items():
            if name.endswith("embed_tokens.weight") and vocab and tensor["shape"][0] != vocab:
                raise MustError(f"{path}: {name} has {tensor['shape'][0]} rows but {config_file} says vocab_size "
                                f"{vocab} (weights and config from different models?)")


def load_model(folder: str | Path, trust_remote_code: bool | Collection[str] = False):
    """:meth:`MusicLALM.from_pretrained` after :func:`check_saved_model`, any other load failure a MustError
    naming the folder (``trust_remote_code`` as there: the caller's, never the folder's)."""
    from must.models.lalm import MusicLALM

    check_saved_model(folder)
    try:
        return MusicLALM.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except MustError:
        raise
    except Exception as exc:  # noqa: BLE001  a library's error about a folder the checks above let through
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MustError(f"model folder {folder} does not load: {type(exc).__name__}: {first}") from exc
