"""LoRA adapters of the U-Net through diffusers' loader conventions, for [`LatentSyncPipeline`], and the record of
the base model each adapter was trained on.

[`LatentSyncLoraLoaderMixin`] gives the pipeline ``load_lora_weights``, ``save_lora_weights``, ``lora_state_dict``
and, from diffusers' ``LoraBaseMixin``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``,
``disable_lora`` / ``enable_lora``, ``delete_adapters`` and ``get_active_adapters``. Adapters are stored as diffusers
stores them: ``pytorch_lora_weights.safetensors`` with keys ``unet.<module>.lora_A.weight`` /
``.lora_B.weight`` and the peft ``LoraConfig`` (rank, alpha, targets) in the file's metadata.

Unlike diffusers, which logs a warning and loads nothing when no key matches, a file that is empty, holds no LoRA
weights, or names modules this U-Net does not have raises [`LoraAdapterError`]. Adapters saved by
``unet.save_lora_adapter`` (keys without the ``unet.`` prefix) load too.

An adapter only fits the U-Net it was trained on: on another architecture (a stage-1 U-Net without the temporal
layers a stage-2 adapter targets) some of its tensors have no layer to go to. So the trainer saves, beside the
weights, a record of the base ([`save_lora_adapter`], ``latentsync_lora.json``: where its weights came from, its
config, and a SHA-256 of its weights), and ``load_lora_weights`` checks it: another architecture is refused
([`LoRABaseMismatchError`]), other weights of the same architecture are reported loudly (refused with
``strict_base=True``), and an adapter without a record is loaded with a warning that its base is not checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.loaders.lora_base import LoraBaseMixin
from diffusers.utils import USE_PEFT_BACKEND
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from ..errors import LatentSyncInputError
from ..model_source import is_hub_id
from ..utils import read_json

logger = logging.getLogger(__name__)

UNET_NAME = "unet"
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
LORA_RECORD_FILE = "latentsync_lora.json"
"""The record of an adapter's base model, saved beside its weights."""
_UNFUSED_STATE = "_latentsync_unfused_state"
"""The U-Net attribute holding, while adapters are fused, each fused layer's weights and scales from before."""


class LoraAdapterError(LatentSyncInputError):
    """A LoRA file that cannot apply to this pipeline's U-Net (empty, not LoRA, or for other modules)."""


class LoRABaseMismatchError(LoraAdapterError):
    """A LoRA adapter was trained on another U-Net than the one it is being loaded onto."""


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
    adapted = {_module_name(k[len(prefix):]) for k in state_dict}
    unknown = sorted(adapted - set(modules))
    # an adapter already loaded wraps its layers (".base_layer"), which does not change their names
    if unknown:
        raise LoRABaseMismatchError(f"{source} adapts {len(unknown)} of its {len(adapted)} modules that this U-Net "
                                    f"does not have, e.g. {unknown[:3]}: it was trained for another model")
    return state_dict


# ---------------------------------------------------------------------------------------------------- base record
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
    """Save ``unet``'s LoRA adapter ``adapter_name`` in diffusers' pipeline LoRA format (``unet.``-prefixed keys and
    the adapter config, loaded by ``pipe.load_lora_weights(directory)``) with the record of its base model
    (``latentsync_lora.json``, see [`lora_base_record`]); returns ``directory``."""
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in unet.peft_config[adapter_name].to_dict().items()}
    layers = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    LatentSyncLoraLoaderMixin.save_lora_weights(directory, unet_lora_layers=layers, unet_lora_adapter_metadata=config)
    with open(os.path.join(directory, LORA_RECORD_FILE), "w") as fh:
        json.dump(lora_base_record(unet, source, adapter_name, **extra), fh, indent=1)
    return directory


def read_lora_record(source: str | os.PathLike | dict, **kwargs: Any) -> dict[str, Any] | None:
    """The base-model record saved beside an adapter (a local folder, or a Hub repo: ``subfolder``, ``cache_dir``,
    ``revision``, ``token``, ``local_files_only`` as for loading), or None when it has none (or ``source`` is a
    state dict)."""
    if isinstance(source, dict):
        return None
    source = os.fspath(source)
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(source):
        return read_json(os.path.join(source, subfolder, LORA_RECORD_FILE))
    if os.path.isfile(source):
        return read_json(os.path.join(os.path.dirname(source), LORA_RECORD_FILE))
    from huggingface_hub import hf_hub_download  # deferred: only Hub adapters need it
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError  # deferred: as above

    try:
        path = hf_hub_download(source, LORA_RECORD_FILE, subfolder=subfolder or None,
                               **{k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only")
                                  if kwargs.get(k) is not None})
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    return read_json(path)


def check_lora_base(unet: torch.nn.Module, record: dict[str, Any] | None, source: str,
                    strict: bool = False) -> None:
    """Check an adapter's base-model ``record`` (see [`read_lora_record`]) against ``unet``: another U-Net config is
    refused; other weights of the same architecture are reported loudly (refused with ``strict``); no record is a
    warning (the base cannot be checked).

    Raises:
        LoRABaseMismatchError: the record names another U-Net config, or (with ``strict``) other base weights.
    """
    if record is None:
        logger.warning("the LoRA adapter %s has no record of its base model (%s): its base is not checked",
                       source, LORA_RECORD_FILE)
        return
    base = record.get("base_model", {})
    if base.get("unet_config") is not None:
        ours = _config(unet)
        differ = sorted(k for k in set(ours) | set(base["unet_config"]) if ours.get(k) != base["unet_config"].get(k))
        if differ:
            shown = ", ".join(f"{k}={base['unet_config'].get(k)!r} (this U-Net: {ours.get(k)!r})" for k in differ[:4])
            raise LoRABaseMismatchError(
                f"the LoRA adapter {source} was trained on another U-Net ({base.get('source')}): {shown}"
                f"{'' if len(differ) <= 4 else f' and {len(differ) - 4} more'}. Load it onto the U-Net it was "
                "trained on")
    if next(unet.parameters()).dtype != torch.float32:
        logger.info("U-Net not in float32: the base weights of the LoRA adapter are not compared (only its config)")
        return
    if base_weights_sha256(unet) != base.get("weights_sha256"):
        message = (f"the LoRA adapter {source} was trained on other weights of this architecture "
                   f"({base.get('source')}); its effect on these weights is not what training saw")
        if strict:
            raise LoRABaseMismatchError(message)
        logger.warning("%s (pass strict_base=True to refuse)", message)


@dataclass
class _UnfusedLayer:
    """A LoRA layer's base weights (on the CPU) and adapter scales from before its first fusion."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scaling: dict[str, float]


def _lora_layers(model: torch.nn.Module) -> dict[str, BaseTunerLayer]:
    """The peft LoRA layers of ``model`` by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def check_no_lora_layers(unet: torch.nn.Module, action: str) -> None:
    """[`LoraAdapterError`] when ``unet`` holds LoRA layers (peft's wrappers, which rename the weights they wrap
    to ``*.base_layer.*``): ``action`` (e.g. "save the pipeline") would write weights that load as random layers."""
    if not _lora_layers(unet):
        return
    names = sorted(getattr(unet, "peft_config", {}) or {})
    loaded = f"LoRA adapters {names}" if names else "LoRA layers (of deleted adapters)"
    raise LoraAdapterError(
        f"cannot {action} while the U-Net has {loaded}: their layers would be saved in place of its weights. Call "
        "pipe.unload_lora_weights() first to save the base model, or pipe.fuse_lora() then pipe.unload_lora_weights() "
        "to save it with the adapters merged (an adapter itself: latentsync.loaders.lora.save_lora_adapter)")


def _check_lora_source(source: Any) -> None:
    """[`LoraAdapterError`] for a path that is neither an existing file or folder nor a Hub repo id (diffusers would
    report it as a malformed repo id)."""
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source) and not is_hub_id(os.fspath(source)):
        raise LoraAdapterError(f"LoRA adapter {os.fspath(source)}: no such file or folder (and not a Hub repo id)")


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
        strict_base: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add the LoRA adapter of a folder, Hub repo, ``.safetensors`` folder + ``weight_name`` or state dict to the
        U-Net, as ``adapter_name`` (default ``default_0``, ``default_1``, ...), active at full strength. The record
        of its base model, when saved beside it, is checked first (see [`check_lora_base`]); ``strict_base`` refuses
        an adapter trained on other weights of this architecture instead of warning.

        Raises:
            LoRABaseMismatchError: the adapter was trained on another U-Net (its record says so, or it adapts
                modules this U-Net lacks).
            LoraAdapterError: the file is empty or is not a LoRA adapter.
            ValueError: ``adapter_name`` is already in use (diffusers' message).
        """
        if not USE_PEFT_BACKEND:
            raise ImportError("LoRA adapters need peft: pip install peft")
        _check_lora_source(pretrained_model_name_or_path_or_dict)
        source = (pretrained_model_name_or_path_or_dict if not isinstance(pretrained_model_name_or_path_or_dict, dict)
                  else "the LoRA state dict")
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = dict(pretrained_model_name_or_path_or_dict)
        state_dict, lora_metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict,
                                                         return_lora_metadata=True, **kwargs)
        unet = getattr(self, self.unet_name)
        source = os.fspath(source) if not isinstance(source, str) else source
        check_lora_base(unet, read_lora_record(pretrained_model_name_or_path_or_dict, **kwargs), source,
                        strict=strict_base)
        state_dict = check_unet_lora(state_dict, unet, source)
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
        """Merge the active adapters (or ``adapter_names``), times ``lora_scale``, into the U-Net's weights (faster;
        undo with ``unfuse_lora``). The weights of the layers it changes are kept on the CPU until then, so that
        ``unfuse_lora`` restores them bit for bit (and the adapters' strengths as they were)."""
        components = components or [self.unet_name]
        unet = getattr(self, self.unet_name, None)
        if self.unet_name in components and unet is not None:
            saved: dict[str, _UnfusedLayer] = getattr(unet, _UNFUSED_STATE, None) or {}
            for name, layer in _lora_layers(unet).items():
                if name in saved or layer.merged:
                    continue
                base = layer.get_base_layer()
                bias = getattr(base, "bias", None)
                saved[name] = _UnfusedLayer(base.weight.detach().to("cpu", copy=True),
                                            None if bias is None else bias.detach().to("cpu", copy=True),
                                            dict(getattr(layer, "scaling", {})))
        super().fuse_lora(components=components, lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)
        if self.unet_name in components and unet is not None:
            layers = _lora_layers(unet)
            setattr(unet, _UNFUSED_STATE, {name: state for name, state in saved.items() if layers[name].merged})

    def unfuse_lora(self, components: list[str] | None = None, **kwargs: Any) -> None:
        """Take fused adapters out of the U-Net's weights again: the weights and adapter strengths are those from
        before ``fuse_lora``, bit for bit (diffusers alone subtracts the adapters, which leaves float round-off,
        and keeps a ``lora_scale`` given to ``fuse_lora`` on the adapters)."""
        components = components or [self.unet_name]
        unet = getattr(self, self.unet_name, None)
        if unet is None or self.unet_name not in components:
            super().unfuse_lora(components=components, **kwargs)
            return
        merged = {name for name, layer in _lora_layers(unet).items() if layer.merged}
        super().unfuse_lora(components=components, **kwargs)
        saved: dict[str, _UnfusedLayer] = getattr(unet, _UNFUSED_STATE, None) or {}
        layers = _lora_layers(unet)
        still_fused = {}
        with torch.no_grad():
            for name, state in saved.items():
                layer = layers.get(name)
                if layer is None or name not in merged:
                    continue  # no longer a LoRA layer, or not fused: nothing to restore
                if layer.merged:
                    still_fused[name] = state
                    continue
                base = layer.get_base_layer()
                base.weight.copy_(state.weight)
                if state.bias is not None:
                    base.bias.copy_(state.bias)
                layer.scaling.update({k: v for k, v in state.scaling.items() if k in layer.scaling})
        setattr(unet, _UNFUSED_STATE, still_fused)

    def unload_lora_weights(self) -> None:
        """Remove every adapter from the U-Net. Adapters fused with ``fuse_lora`` and not unfused stay merged into
        the weights (diffusers' way to keep a fused LoRA without its layers); ``unfuse_lora`` first to get the
        base model back, bit for bit."""
        super().unload_lora_weights()
        unet = getattr(self, self.unet_name, None)
        if unet is not None and getattr(unet, _UNFUSED_STATE, None):
            setattr(unet, _UNFUSED_STATE, {})
