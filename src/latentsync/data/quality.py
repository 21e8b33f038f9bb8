"""Visual-quality scorers for data filtering: clips whose faces look blurry or damaged are dropped.

A scorer looks at a few aligned face frames of a clip and returns one number; clips scoring below the scorer's
``threshold`` are dropped. Two are provided:

* [`HyperIQAScorer`]: the hyperIQA network ([`~latentsync.models.HyperIQA`]) with its KonIQ-10k weights
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

from ..errors import first_line
from ..model_source import check_model_sources, go_offline, hub_unreachable_reason, is_hub_cached, model_file
from ..models.hyperiqa import HyperIQA
from ..utils import load_state_file

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

    def __init__(self, threshold: float = 8.0, fallback_reason: str | None = None):
        self.threshold = threshold
        self.fallback_reason = fallback_reason  # why hyperIQA was not used, when "auto" fell back to this scorer

    def __call__(self, frames: Sequence[np.ndarray]) -> float:
        scores = []
        for f in probe_frames(frames):
            grey = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
            scores.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
        return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------- hyperIQA


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
        """Load ``koniq_pretrained.pkl`` from a local file, or ``filename`` in a local folder (a copy of the Hub
        repository) or a Hub repository."""
        state = load_state_file(model_file(path_or_repo, filename))
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
    to a ``.pkl`` file or to a folder holding ``auxiliary/koniq_pretrained.pkl``, or ``"hyperiqa:<repo id or path>"``
    loads them from there. ``"auto"``: hyperIQA if its weights
    can be loaded (local file or Hub cache/download), else sharpness with a warning.
    """
    kwargs = {} if threshold is None else {"threshold": threshold}
    if spec == "sharpness":
        return SharpnessScorer(**kwargs)
    if spec == "auto":
        reason, offline = None, hub_unreachable_reason()
        if offline:
            go_offline(offline)
        if offline and not is_hub_cached(HYPERIQA_REPO_ID, HYPERIQA_FILENAME):
            reason = f"{HYPERIQA_FILENAME} of {HYPERIQA_REPO_ID} is not cached and the Hub is unavailable ({offline})"
        else:
            try:
                return HyperIQAScorer.from_pretrained(device=device, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure to fetch/load falls back to the weight-free scorer
                reason = first_line(exc)
        # the caller's threshold holds for the scorer that runs (the workers of a run load "sharpness" with it too)
        scorer = SharpnessScorer(fallback_reason=f"hyperIQA weights unavailable: {reason}", **kwargs)
        logger.warning("hyperIQA weights unavailable (%s); using the sharpness scorer (keep score >= %g) for quality "
                       "filtering", reason, scorer.threshold)
        return scorer
    # the setting is named "--quality" in a missing model's message: its advice "--quality=DIR" is a valid one
    if spec == "hyperiqa":
        check_model_sources({"--quality": (HYPERIQA_REPO_ID, HYPERIQA_FILENAME)})
        return HyperIQAScorer.from_pretrained(device=device, **kwargs)
    if spec.startswith("hyperiqa:"):
        source = spec.split(":", 1)[1]
        check_model_sources({"--quality": source if os.path.exists(source) else (source, HYPERIQA_FILENAME)})
        return HyperIQAScorer.from_pretrained(source, device=device, **kwargs)
    if os.path.exists(spec):  # koniq_pretrained.pkl, or a folder holding auxiliary/koniq_pretrained.pkl
        return HyperIQAScorer.from_pretrained(spec, device=device, **kwargs)
    raise ValueError(f"unknown quality scorer {spec!r}: use auto, sharpness, hyperiqa, hyperiqa:<repo or path>, "
                     "or a path to koniq_pretrained.pkl or to a folder holding auxiliary/koniq_pretrained.pkl")
