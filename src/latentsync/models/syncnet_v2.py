"""The classic SyncNet of syncnet_python (Chung and Zisserman, 2016; weights ``syncnet_v2.model``): the network the
official data pipeline and the LSE-C / LSE-D metrics use to measure audio-visual sync."""

from __future__ import annotations

import os

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import LatentSyncInputError


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNetV2(ModelMixin, ConfigMixin):
    """The classic SyncNet ("S" network of syncnet_python, weights ``syncnet_v2.model``).

    Module names and indices match the original so its state dict loads as is (see [`from_syncnet_python`]).
    ``forward_lip`` takes ``(B, 3, 5, 224, 224)`` BGR face crops in 0..255, ``forward_aud`` ``(B, 1, 13, 20)``
    MFCC windows; both return ``(B, embed_dim)`` (not normalised).
    """

    @register_to_config
    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(1, 1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(3, stride=2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """Audio features ``(B, D)`` for MFCC windows ``(B, 1, 13, 20)``."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, crops: torch.Tensor) -> torch.Tensor:
        """Visual features ``(B, D)`` for lip windows ``(B, 3, 5, 224, 224)``."""
        return self.netfclip(self.netcnnlip(crops).flatten(1))

    def forward(self, crops: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_lip(crops), self.forward_aud(mfcc)

    @classmethod
    def from_syncnet_python(cls, path: str | os.PathLike, map_location: str = "cpu") -> SyncNetV2:
        """Load syncnet_python's ``syncnet_v2.model`` (a plain state dict) with ``torch.load(weights_only=True)``.

        Raises:
            LatentSyncInputError: the file is missing or its keys/shapes do not match the classic SyncNet.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise LatentSyncInputError(f"SyncNet v2 weights not found: {path}")
        state = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise LatentSyncInputError(f"{path} is not a SyncNet v2 state dict")
        for prefix in ("__S__.", "module."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        fc = state.get("netfcaud.3.weight")
        model = cls(embed_dim=int(fc.shape[0]) if isinstance(fc, torch.Tensor) else 1024)
        expected = model.state_dict()
        missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
        unexpected = sorted(k for k in state if k not in expected)
        wrong = sorted(k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise LatentSyncInputError(
                f"{path} does not match the classic SyncNet: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {wrong[:5]}"
            )
        model.load_state_dict(state, strict=False)
        return model.eval()
