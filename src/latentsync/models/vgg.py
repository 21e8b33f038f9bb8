"""VGG-16's convolutional trunk, the backbone of the LPIPS perceptual loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ..model_source import model_file
from ..utils import load_state_file

VGG16_HUB_ID = "timm/vgg16.tv_in1k"


class VGG16Features(ModelMixin, ConfigMixin):
    """VGG-16 convolutional trunk returning the five LPIPS taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).

    Parameter names follow torchvision / timm (``features.0.weight`` ...), so ImageNet VGG-16 weights load directly
    with [`from_vgg16_weights`]. Smaller ``channels`` give a tiny random backbone for tests.
    """

    @register_to_config
    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512, 512), convs_per_stage: Sequence[int] = (2, 2, 3, 3, 3)):
        super().__init__()
        if len(channels) != len(convs_per_stage):
            raise ValueError("channels and convs_per_stage must have the same length")
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        in_ch = 3
        for stage, (ch, n) in enumerate(zip(channels, convs_per_stage)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = ch
            self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)

    @property
    def tap_channels(self) -> list[int]:
        return list(self.config.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
                if len(outs) == len(self.taps):
                    break
        return outs

    @classmethod
    def from_vgg16_weights(cls, source: str = VGG16_HUB_ID) -> "VGG16Features":
        """ImageNet VGG-16 trunk from a Hub repo id (timm layout, ``model.safetensors``) or a local weights file
        (``.safetensors``, or torchvision's ``vgg16-*.pth`` read with ``weights_only=True``)."""
        state = load_state_file(model_file(source, "model.safetensors"))
        trunk = {k: v for k, v in state.items() if k.startswith("features.")}
        if not trunk:
            raise ValueError(f"{source} holds no 'features.*' tensors: not a VGG-16 checkpoint")
        model = cls()
        model.load_state_dict(trunk, strict=True)
        return model
