"""Visual-quality scorers for data filtering (spec section 8, step 9).

A scorer looks at a few aligned face frames of a clip and returns one number; clips scoring below the scorer's
``threshold`` are dropped. Two are provided:

* [`HyperIQAScorer`]: the hyperIQA network (Su et al., CVPR 2020) with its KonIQ-10k weights
  (``koniq_pretrained.pkl``, as the official pipeline uses; score 0-100, keep >= 40), loaded from a local file or the
  LatentSync Hub repository.
* [`SharpnessScorer`]: variance of the Laplacian of the grey image, a weight-free blur measure used when the hyperIQA
  weights are not available.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

HYPERIQA_REPO_ID = "ByteDance/LatentSync-1.5"
HYPERIQA_FILENAME = "auxiliary/koniq_pretrained.pkl"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class QualityScorer(Protocol):
    """Scores a clip from its RGB uint8 frames; higher is better, clips below ``threshold`` are dropped."""

    name: str
    threshold: float

    def __call__(self, frames: Sequence[np.ndarray]) -> float: ...


def probe_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """First, middle and last frame (the frames the official filter scores)."""
    if len(frames) == 0:
        raise ValueError("no frames to score")
    idx = sorted({0, len(frames) // 2, len(frames) - 1})
    return [frames[i] for i in idx]


class SharpnessScorer:
    """Mean variance of the Laplacian over the first, middle and last frame (grey, 0-255 scale).

    Blurry faces score low: on 256-px aligned faces of the LatentSync demo clips the scores are 13-54, and a 2-px
    Gaussian blur brings them to 3-5; the default threshold 8 sits between. The value depends on resolution and
    content, so check the score distribution of your data (``quality_score`` column) and set your own.
    """

    name = "sharpness"

    def __init__(self, threshold: float = 8.0):
        self.threshold = threshold

    def __call__(self, frames: Sequence[np.ndarray]) -> float:
        scores = []
        for f in probe_frames(frames):
            grey = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
            scores.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
        return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------- hyperIQA network


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


class HyperIQA(nn.Module):
    """hyperIQA: a hyper network predicts, per image, the weights of a small target MLP that outputs the quality
    score (KonIQ-10k scale, about 0-100). Parameter names follow the authors' ``koniq_pretrained.pkl``.
    Input: ``(N, 3, 224, 224)`` ImageNet-normalised RGB.
    """

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


class HyperIQAScorer:
    """Mean hyperIQA score of the first, middle and last frame (centre crop 224, as the official filter)."""

    name = "hyperiqa"

    def __init__(self, model: HyperIQA, threshold: float = 40.0, device: str | torch.device = "cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.threshold = threshold
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path_or_repo: str = HYPERIQA_REPO_ID, filename: str = HYPERIQA_FILENAME,
                        threshold: float = 40.0, device: str | torch.device = "cpu") -> "HyperIQAScorer":
        """Load ``koniq_pretrained.pkl`` from a local file or a Hub repository (``filename`` inside it)."""
        if os.path.isfile(path_or_repo):
            path = path_or_repo
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(path_or_repo, filename)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model = HyperIQA()
        model.load_state_dict(state)
        return cls(model, threshold=threshold, device=device)

    @torch.no_grad()
    def __call__(self, frames: Sequence[np.ndarray]) -> float:
        batch = []
        for f in probe_frames(frames):
            h, w = f.shape[:2]
            if min(h, w) < 224:
                scale = 224 / min(h, w)
                f = cv2.resize(f, (max(224, round(w * scale)), max(224, round(h * scale))),
                               interpolation=cv2.INTER_CUBIC)
                h, w = f.shape[:2]
            y0, x0 = (h - 224) // 2, (w - 224) // 2
            batch.append(np.ascontiguousarray(f[y0 : y0 + 224, x0 : x0 + 224]))
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device)
        return float(self.model(x).float().mean().cpu())


def load_quality_scorer(spec: str = "auto", threshold: float | None = None,
                        device: str | torch.device = "cpu") -> QualityScorer:
    """Build a scorer from ``spec``.

    ``"sharpness"``: [`SharpnessScorer`]. ``"hyperiqa"``: hyperIQA weights from the LatentSync Hub repository; a path
    to a ``.pkl`` file or ``"hyperiqa:<repo id or path>"`` loads them from there. ``"auto"``: hyperIQA if its weights
    can be loaded (local file or Hub cache/download), else sharpness with a warning.
    """
    kwargs = {} if threshold is None else {"threshold": threshold}
    if spec == "sharpness":
        return SharpnessScorer(**kwargs)
    if spec == "auto":
        try:
            return HyperIQAScorer.from_pretrained(device=device, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch/load falls back to the weight-free scorer
            logger.warning("hyperIQA weights unavailable (%s); using the sharpness scorer for quality filtering",
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return SharpnessScorer()
    if spec == "hyperiqa":
        return HyperIQAScorer.from_pretrained(device=device, **kwargs)
    if spec.startswith("hyperiqa:"):
        return HyperIQAScorer.from_pretrained(spec.split(":", 1)[1], device=device, **kwargs)
    if os.path.isfile(spec):
        return HyperIQAScorer.from_pretrained(spec, device=device, **kwargs)
    raise ValueError(f"unknown quality scorer {spec!r}: use auto, sharpness, hyperiqa, hyperiqa:<repo or path>, "
                     "or a path to koniq_pretrained.pkl")
