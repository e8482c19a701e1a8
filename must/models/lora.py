"""LoRA (peft) injected in place, so parameter names stay stable (``...q_proj.lora_A.default.weight``)
and the wrapped HF model keeps its own ``generate``. Adapters are saved in PEFT's own layout
(``adapter_config.json`` + ``adapter_model.safetensors``), loadable with ``PeftModel.from_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from must.errors import MustError
from must.models.config import LoraConfig

_PREFIX = "base_model.model."  # how PeftModel names keys in adapter files


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )


def add_lora(module: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject a LoRA adapter named ``default``; only adapter weights of ``module`` stay trainable."""
    try:
        inject_adapter_in_model(peft_config(cfg), module)
    except ValueError as exc:
        raise MustError(
            f"LoRA target_modules {list(cfg.target_modules)} not found in {type(module).__name__}: {exc}"
        ) from exc
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in module.modules())


def base_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without LoRA weights, with the original (pre-injection) key names."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if "lora_" not in k}


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``base_state_dict`` with the adapters merged into the base weights (module left unmerged)."""
    layers = [m for m in module.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.merge()
    try:
        return {k: v.clone() for k, v in base_state_dict(module).items()}
    finally:
        for m in layers:
            m.unmerge()


def save_adapter(module: nn.Module, folder: Path, cfg: LoraConfig, base_name: str | None = None) -> None:
    """Write the adapter as PEFT does: ``adapter_config.json`` + ``adapter_model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    pc = peft_config(cfg)
    pc.base_model_name_or_path = base_name
    pc.save_pretrained(str(folder))
    state = {_PREFIX + k: v.detach().contiguous() for k, v in get_peft_model_state_dict(module).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))


def load_adapter(module: nn.Module, folder: Path) -> None:
    """Load adapter weights saved by :func:`save_adapter` into a module with the same adapter injected."""
    file = folder / "adapter_model.safetensors"
    if not file.exists():
        raise MustError(f"adapter weights missing: {file}")
    state = {k.removeprefix(_PREFIX): v for k, v in load_file(str(file)).items()}
    result = set_peft_model_state_dict(module, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise MustError(f"adapter {folder} does not fit the model: unexpected keys {missing[:3]}")


def read_adapter_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())
