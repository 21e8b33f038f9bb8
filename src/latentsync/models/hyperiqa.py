"""hyperIQA (Su et al., CVPR 2020): a blind image-quality network whose hyper network predicts, per image, the
weights of the small MLP that scores it. Used with its KonIQ-10k weights to filter training clips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _HyperIQABackbone(nn.Module):
    """ResNet-50 with the four local-distortion-aware (LDA) heads of hyperIQA."""

    def __init__(self, lda_out: int, target_in: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
            layers = [_Bottleneck(cin, planes, stride, down)]
            layers += [_Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            cin = planes * 4
        self.lda1_pool = nn.Sequential(nn.Conv2d(256, 16, 1, bias=False), nn.AvgPool2d(7, stride=7))
        self.lda1_fc = nn.Linear(16 * 64, lda_out)
        self.lda2_pool = nn.Sequential(nn.Conv2d(512, 32, 1, bias=False), nn.AvgPool2d(7, stride=7))
        self.lda2_fc = nn.Linear(32 * 16, lda_out)
        self.lda3_pool = nn.Sequential(nn.Conv2d(1024, 64, 1, bias=False), nn.AvgPool2d(7, stride=7))
        self.lda3_fc = nn.Linear(64 * 4, lda_out)
        self.lda4_pool = nn.AvgPool2d(7, stride=7)
        self.lda4_fc = nn.Linear(2048, target_in - 3 * lda_out)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer1(x)
        v1 = self.lda1_fc(self.lda1_pool(x).flatten(1))
        x = self.layer2(x)
        v2 = self.lda2_fc(self.lda2_pool(x).flatten(1))
        x = self.layer3(x)
        v3 = self.lda3_fc(self.lda3_pool(x).flatten(1))
        x = self.layer4(x)
        v4 = self.lda4_fc(self.lda4_pool(x).flatten(1))
        return x, torch.cat([v1, v2, v3, v4], 1)


class HyperIQA(ModelMixin, ConfigMixin):
    """hyperIQA: a hyper network predicts, per image, the weights of a small target MLP that outputs the quality
    score (KonIQ-10k scale, about 0-100). Parameter names follow the authors' ``koniq_pretrained.pkl``.
    Input: ``(N, 3, 224, 224)`` ImageNet-normalised RGB.
    """

    @register_to_config
    def __init__(self, lda_out: int = 16, hyper_in: int = 112, target_in: int = 224,
                 fc_sizes: Sequence[int] = (112, 56, 28, 14), feature_size: int = 7):
        super().__init__()
        self.hyper_in, self.target_in, self.feature_size = hyper_in, target_in, feature_size
        self.sizes = [target_in, *fc_sizes]
        self.res = _HyperIQABackbone(lda_out, target_in)
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True), nn.Conv2d(1024, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, hyper_in, 1), nn.ReLU(inplace=True),
        )
        area = feature_size**2
        for i in range(4):
            cin, cout = self.sizes[i], self.sizes[i + 1]
            setattr(self, f"fc{i + 1}w_conv", nn.Conv2d(hyper_in, cin * cout // area, 3, padding=1))
            setattr(self, f"fc{i + 1}b_fc", nn.Linear(hyper_in, cout))
        self.fc5w_fc = nn.Linear(hyper_in, fc_sizes[-1])
        self.fc5b_fc = nn.Linear(hyper_in, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feat, vec = self.res(images)
        n = images.shape[0]
        hyper = self.conv1(feat)
        pooled = hyper.mean(dim=(2, 3))
        q = vec
        for i in range(4):
            cin, cout = self.sizes[i], self.sizes[i + 1]
            w = getattr(self, f"fc{i + 1}w_conv")(hyper).reshape(n, cout, cin)
            b = getattr(self, f"fc{i + 1}b_fc")(pooled)
            q = torch.sigmoid(torch.einsum("noi,ni->no", w, q) + b)
        w5 = self.fc5w_fc(pooled)
        return (w5 * q).sum(1) + self.fc5b_fc(pooled)[:, 0]
