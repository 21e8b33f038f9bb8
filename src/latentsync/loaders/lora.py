"""LoRA adapters of the LatentSync U-Net that know their base model.

An adapter only fits the U-Net it was trained on: loaded onto another architecture (a stage-1 U-Net without the
temporal layers a stage-2 adapter targets) peft skips the tensors that have no layer to go to, silently. So the
trainer saves, beside ``pytorch_lora_weights.safetensors``, a record of the base (``latentsync_lora.json``: where
its weights came from, its config, and a SHA-256 of its weights), and [`load_lora_adapter`] checks it: another
architecture is refused, other weights of the same architecture are reported loudly (refused with
``strict=True``), and an adapter whose tensors do not all land is refused whether or not it has a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import torch
from safetensors import safe_open

from ..errors import LatentSyncInputError
from ..utils import read_json

logger = logging.getLogger(__name__)

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
LORA_RECORD_FILE = "latentsync_lora.json"


class LoRABaseMismatchError(LatentSyncInputError):
    """A LoRA adapter does not fit the U-Net it is being loaded onto."""


def _canonical(name: str) -> str:
    """A base weight's name without peft's ``base_layer`` wrapper."""
    return name.replace(".base_layer.", ".")


def base_weights_sha256(unet: torch.nn.Module) -> str:
    """SHA-256 of the U-Net's own weights (LoRA tensors excluded, names as without adapters, values in float32): the
    same for the base before and after adapters are added."""
    digest = hashlib.sha256()
    state = {_canonical(k): v for k, v in unet.state_dict().items() if "lora_" not in k}
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _config(unet: torch.nn.Module) -> dict[str, Any]:
    """The U-Net's constructor settings as plain JSON values (lists, not tuples)."""
    return json.loads(json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith("_")}))


def lora_base_record(unet: torch.nn.Module, source: str | None, adapter_name: str = "default",
                     **extra: Any) -> dict[str, Any]:
    """What [`save_lora_adapter`] writes about the base of ``unet``'s adapter: ``source`` (where its weights came
    from), its config and weights hash, and the adapter's rank, alpha and target modules (``extra`` is added)."""
    peft_config = getattr(unet, "peft_config", {}).get(adapter_name)
    return {
        "base_model": {"source": source, "unet_config": _config(unet), "weights_sha256": base_weights_sha256(unet)},
        "lora": {"rank": getattr(peft_config, "r", None), "alpha": getattr(peft_config, "lora_alpha", None),
                 "target_modules": str(getattr(peft_config, "target_modules", None))},
        **extra,
    }


def save_lora_adapter(unet: torch.nn.Module, directory: str, source: str | None, adapter_name: str = "default",
                      **extra: Any) -> str:
    """Save ``unet``'s LoRA adapter (diffusers' ``save_lora_adapter``, ``pytorch_lora_weights.safetensors``) and the
    record of its base model (``latentsync_lora.json``) in ``directory``; returns ``directory``."""
    unet.save_lora_adapter(directory, adapter_name=adapter_name)
    with open(os.path.join(directory, LORA_RECORD_FILE), "w") as fh:
        json.dump(lora_base_record(unet, source, adapter_name, **extra), fh, indent=1)
    return directory


def read_lora_record(directory: str) -> dict[str, Any] | None:
    """The base-model record saved beside an adapter, or None when it has none."""
    return read_json(os.path.join(directory, LORA_RECORD_FILE))


def _adapter_modules(directory: str) -> list[str]:
    """The module paths an adapter file holds tensors for (``...to_q`` for ``...to_q.lora_A.weight``)."""
    with safe_open(os.path.join(directory, LORA_WEIGHTS_FILE), framework="pt") as fh:
        keys = list(fh.keys())
    return [k.split(".lora_")[0] for k in keys]


def check_lora_base(unet: torch.nn.Module, directory: str, strict: bool = False) -> None:
    """Check that the adapter in ``directory`` was trained on ``unet``.

    Raises:
        LoRABaseMismatchError: the adapter's tensors do not all have a layer in ``unet`` (another architecture),
            its record names another U-Net config, or (with ``strict``) other base weights.
    """
    if not os.path.isfile(os.path.join(directory, LORA_WEIGHTS_FILE)):
        raise LatentSyncInputError(f"no LoRA adapter ({LORA_WEIGHTS_FILE}) in {directory}")
    modules = {_canonical(name + ".") for name, _ in unet.named_modules()}
    targets = _adapter_modules(directory)
    homeless = [t for t in targets if t + "." not in modules]
    record = read_lora_record(directory)
    base = (record or {}).get("base_model", {})
    if base.get("unet_config") is not None:
        ours = _config(unet)
        differ = sorted(k for k in set(ours) | set(base["unet_config"]) if ours.get(k) != base["unet_config"].get(k))
        if differ:
            shown = ", ".join(f"{k}={base['unet_config'].get(k)!r} (this U-Net: {ours.get(k)!r})" for k in differ[:4])
            raise LoRABaseMismatchError(
                f"the LoRA adapter in {directory} was trained on another U-Net ({base.get('source')}): {shown}"
                f"{'' if len(differ) <= 4 else f' and {len(differ) - 4} more'}; {len(homeless)} of its {len(targets)} "
                "tensors have no layer here. Load it onto the U-Net it was trained on")
    if homeless:
        raise LoRABaseMismatchError(
            f"{len(homeless)} of the {len(targets)} tensors of the LoRA adapter in {directory} have no layer in this "
            f"U-Net (e.g. {homeless[0]}): it was trained on another architecture")
    if record is None:
        logger.warning("the LoRA adapter in %s has no record of its base model (%s): its base is not checked",
                       directory, LORA_RECORD_FILE)
        return
    if next(unet.parameters()).dtype != torch.float32:
        logger.info("U-Net not in float32: the base weights of the LoRA adapter are not compared (only its config)")
        return
    if base_weights_sha256(unet) != base.get("weights_sha256"):
        message = (f"the LoRA adapter in {directory} was trained on other weights of this architecture "
                   f"({base.get('source')}); its effect on these weights is not what training saw")
        if strict:
            raise LoRABaseMismatchError(message)
        logger.warning("%s (pass strict=True to refuse)", message)


def load_lora_adapter(unet: torch.nn.Module, directory: str, adapter_name: str | None = None,
                      strict: bool = False) -> str:
    """Check (see [`check_lora_base`]) and load the adapter in ``directory`` onto ``unet`` (diffusers'
    ``load_lora_adapter``); verify that every tensor of the file landed. Returns the adapter's name."""
    check_lora_base(unet, directory, strict=strict)
    before = {n for n, _ in unet.named_parameters()}
    unet.load_lora_adapter(directory, weight_name=LORA_WEIGHTS_FILE, prefix=None, adapter_name=adapter_name)
    name = adapter_name or list(unet.peft_config)[-1]
    added = [n for n, _ in unet.named_parameters() if n not in before and "lora_" in n]
    expected = len(_adapter_modules(directory))
    if len(added) != expected:
        unet.delete_adapters(name)
        raise LoRABaseMismatchError(
            f"only {len(added)} of the {expected} tensors of the LoRA adapter in {directory} were loaded")
    logger.info("loaded the LoRA adapter %r from %s (%d tensors)", name, directory, expected)
    return name
