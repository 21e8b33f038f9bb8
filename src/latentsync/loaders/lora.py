"""LoRA adapters of the U-Net through diffusers' loader conventions, for [`LatentSyncPipeline`].

[`LatentSyncLoraLoaderMixin`] gives the pipeline ``load_lora_weights``, ``save_lora_weights``, ``lora_state_dict``
and, from diffusers' ``LoraBaseMixin``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``,
``disable_lora`` / ``enable_lora``, ``delete_adapters`` and ``get_active_adapters``. Adapters are stored as diffusers
stores them: ``pytorch_lora_weights.safetensors`` with keys ``unet.<module>.lora_A.weight`` /
``.lora_B.weight`` and the peft ``LoraConfig`` (rank, alpha, targets) in the file's metadata.

Unlike diffusers, which logs a warning and loads nothing when no key matches, a file that is empty, holds no LoRA
weights, or names modules this U-Net does not have raises [`LoraAdapterError`]. Adapters saved by
``unet.save_lora_adapter`` (keys without the ``unet.`` prefix) load too.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import LoraBaseMixin
from diffusers.utils import USE_PEFT_BACKEND

from ..errors import LatentSyncInputError

UNET_NAME = "unet"


class LoraAdapterError(LatentSyncInputError):
    """A LoRA file that cannot apply to this pipeline's U-Net (empty, not LoRA, or for other modules)."""


def _module_name(key: str) -> str:
    """``down_blocks.0.attentions.0....to_q.lora_A.weight`` -> the adapted module's name."""
    for marker in (".lora_A", ".lora_B", ".lora.down", ".lora.up", ".lora_magnitude_vector"):
        if marker in key:
            return key.split(marker)[0]
    return key.rsplit(".", 1)[0]


def check_unet_lora(state_dict: dict[str, torch.Tensor], unet: torch.nn.Module, source: str) -> dict[str, Any]:
    """The ``unet.``-prefixed LoRA state dict of ``state_dict`` (prefix added when missing), after checking that it is
    not empty, holds LoRA weights only, and that every module it adapts exists in ``unet``."""
    if not state_dict:
        raise LoraAdapterError(f"{source} holds no weights: it is not a LoRA adapter")
    not_lora = [k for k in state_dict if "lora" not in k]
    if not_lora:
        raise LoraAdapterError(f"{source} is not a LoRA adapter: keys without 'lora' such as {not_lora[:3]}")
    prefix = f"{UNET_NAME}."
    if any(k.startswith(prefix) for k in state_dict):
        others = sorted({k.split(".", 1)[0] for k in state_dict if not k.startswith(prefix)})
        if others:
            raise LoraAdapterError(f"{source} adapts components this pipeline has no LoRA for: {others} "
                                   f"(only the U-Net takes LoRA weights)")
    else:  # saved by unet.save_lora_adapter: module names without the component prefix
        state_dict = {prefix + k: v for k, v in state_dict.items()}
    modules = dict(unet.named_modules())
    unknown = sorted({_module_name(k[len(prefix):]) for k in state_dict} - set(modules))
    # an adapter already loaded wraps its layers (".base_layer"), which does not change their names
    if unknown:
        raise LoraAdapterError(f"{source} adapts {len(unknown)} modules this U-Net does not have, e.g. "
                               f"{unknown[:3]}: it was trained for another model")
    return state_dict


class LatentSyncLoraLoaderMixin(LoraBaseMixin):
    """Load, combine, fuse and remove LoRA adapters of [`LatentSyncPipeline`]'s U-Net (diffusers' LoRA API)."""

    _lora_loadable_modules = [UNET_NAME]
    unet_name = UNET_NAME

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
                        **kwargs: Any) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict | None]:
        """The LoRA weights of a folder, file name in it (``weight_name``), Hub repo or dict, as diffusers reads them
        (``return_lora_metadata=True`` also returns the saved adapter config)."""
        return_metadata = kwargs.pop("return_lora_metadata", False)
        state_dict, _, lora_metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
            pretrained_model_name_or_path_or_dict, return_lora_metadata=True, **kwargs)
        return (state_dict, lora_metadata) if return_metadata else state_dict

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add the LoRA adapter of a folder, Hub repo, ``.safetensors`` folder + ``weight_name`` or state dict to the
        U-Net, as ``adapter_name`` (default ``default_0``, ``default_1``, ...), active at full strength.

        Raises:
            LoraAdapterError: the file is empty, is not a LoRA adapter, or adapts modules this U-Net lacks.
            ValueError: ``adapter_name`` is already in use (diffusers' message).
        """
        if not USE_PEFT_BACKEND:
            raise ImportError("LoRA adapters need peft: pip install peft")
        source = (pretrained_model_name_or_path_or_dict if not isinstance(pretrained_model_name_or_path_or_dict, dict)
                  else "the LoRA state dict")
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        state_dict, lora_metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict,
                                                         return_lora_metadata=True, **kwargs)
        unet = getattr(self, self.unet_name)
        state_dict = check_unet_lora(state_dict, unet, os.fspath(source) if not isinstance(source, str) else source)
        if lora_metadata and not any(k.startswith(f"{UNET_NAME}.") for k in lora_metadata):
            lora_metadata = {f"{UNET_NAME}.{k}": v for k, v in lora_metadata.items()}
        before = set(getattr(unet, "peft_config", {}))
        unet.load_lora_adapter(state_dict, prefix=self.unet_name, adapter_name=adapter_name, metadata=lora_metadata,
                               _pipeline=self, hotswap=hotswap, low_cpu_mem_usage=kwargs.get("low_cpu_mem_usage",
                                                                                             False))
        if not hotswap and set(getattr(unet, "peft_config", {})) == before:
            raise LoraAdapterError(f"no LoRA layer of {source} was loaded into the U-Net")

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, torch.Tensor | torch.nn.Module] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Any = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata: dict[str, Any] | None = None,
    ) -> None:
        """Save U-Net LoRA weights (e.g. ``peft.get_peft_model_state_dict(unet)``) and their ``LoraConfig`` dict as
        ``save_directory/pytorch_lora_weights.safetensors``, in the layout ``load_lora_weights`` reads."""
        if not unet_lora_layers:
            raise LoraAdapterError("no U-Net LoRA layers to save")
        cls._save_lora_weights(
            save_directory=save_directory, lora_layers={cls.unet_name: unet_lora_layers},
            lora_metadata={cls.unet_name: unet_lora_adapter_metadata}, is_main_process=is_main_process,
            weight_name=weight_name, save_function=save_function, safe_serialization=safe_serialization,
        )

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs: Any) -> None:
        """Merge the active adapters (or ``adapter_names``) into the U-Net's weights (faster; undo with
        ``unfuse_lora``)."""
        super().fuse_lora(components=components or [self.unet_name], lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs: Any) -> None:
        """Subtract fused adapters from the U-Net's weights again."""
        super().unfuse_lora(components=components or [self.unet_name], **kwargs)
