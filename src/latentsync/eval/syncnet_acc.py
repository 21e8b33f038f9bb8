"""SyncNet accuracy and loss on a dataset of aligned clips (as the official ``eval/eval_syncnet_acc.py``).

A pair counts as "in sync" when the cosine similarity of its embeddings exceeds 0.5; accuracy is the fraction of
positive and negative pairs classified correctly. It is also reported per class (in-sync pairs, off-sync pairs):
with balanced pairs a net that calls every pair one way scores 0.5 overall, 1 on one class and 0 on the other,
which [`SyncNetAccuracy.warning`] points out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..models.syncnet import StableSyncNet, syncnet_cosine
from ..utils import scale_latents

logger = logging.getLogger(__name__)

THRESHOLD = 0.5


@dataclass
class SyncNetAccuracy:
    """Result of [`evaluate_syncnet`]."""

    accuracy: float
    loss: float
    num_samples: int
    positive_accuracy: float
    negative_accuracy: float
    mean_positive_cosine: float
    mean_negative_cosine: float
    predicted_positive_rate: float = float("nan")

    @property
    def warning(self) -> str | None:
        """A note when the net predicts one class for every pair (its accuracy then only measures the class mix)."""
        if self.predicted_positive_rate == 0:
            return (f"the SyncNet calls every pair off-sync (cosine <= {THRESHOLD}): its accuracy "
                    f"{self.accuracy:.3f} is the share of off-sync pairs, not a skill")
        if self.predicted_positive_rate == 1:
            return (f"the SyncNet calls every pair in sync (cosine > {THRESHOLD}): its accuracy "
                    f"{self.accuracy:.3f} is the share of in-sync pairs, not a skill")
        return None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "warning": self.warning}


def encode_latents(frames: torch.Tensor, vae, num_frames: int, chunk: int = 40) -> torch.Tensor:
    """``(B, F*3, H, W)`` pixels -> ``(B, F*4, h, w)`` scaled SD-VAE latents (posterior samples) for latent
    SyncNets."""
    b = frames.shape[0]
    pixels = frames.reshape(b * num_frames, 3, *frames.shape[-2:]).to(device=vae.device, dtype=vae.dtype)
    out = []
    for i in range(0, pixels.shape[0], chunk):
        with torch.no_grad():
            out.append(scale_latents(vae.encode(pixels[i : i + chunk]).latent_dist.sample(), vae))
    latents = torch.cat(out)
    return latents.reshape(b, -1, *latents.shape[-2:])


@torch.no_grad()
def evaluate_syncnet(
    model: StableSyncNet,
    dataloader: DataLoader,
    accelerator: Any | None = None,
    vae: Any | None = None,
    max_batches: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> SyncNetAccuracy:
    """Loss and accuracy of ``model`` over ``dataloader`` batches (``frames``, ``mel``, ``label``).

    With an ``accelerate.Accelerator`` the batches may be sharded over processes: results are gathered and every
    process returns the same numbers. ``vae`` is needed for latent-space SyncNets (``config.latent_space``).
    """
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    device = next(unwrapped.parameters()).device
    dtype = dtype or next(unwrapped.parameters()).dtype
    cos_all, labels_all = [], []
    bar = tqdm(dataloader, desc="SyncNet eval", disable=not progress or (
        accelerator is not None and not accelerator.is_local_main_process), leave=False)
    for k, batch in enumerate(bar):
        if max_batches is not None and k >= max_batches:
            break
        frames = batch["frames"].to(device)
        if unwrapped.config.latent_space:
            if vae is None:
                raise ValueError("this SyncNet works on VAE latents: pass a vae")
            frames = encode_latents(frames, vae, unwrapped.config.num_frames)
        mel = batch["mel"].to(device)
        if accelerator is not None:
            with accelerator.autocast():
                visual, audio = model(frames, mel)
        else:
            visual, audio = model(frames.to(dtype), mel.to(dtype))
        cos = syncnet_cosine(visual, audio)
        labels = batch["label"].to(device).float().reshape(-1)
        if accelerator is not None:
            cos, labels = accelerator.gather_for_metrics((cos, labels))
        cos_all.append(cos.float().cpu())
        labels_all.append(labels.float().cpu())
    if was_training:
        model.train()
    if not cos_all:
        raise ValueError("no evaluation batches: the dataset is empty")
    cos = torch.cat(cos_all)
    labels = torch.cat(labels_all)
    loss = float(torch.nn.functional.binary_cross_entropy(cos, labels))
    pred = (cos > THRESHOLD).float()
    correct = pred == labels
    pos, neg = labels == 1, labels == 0

    def _mean(x: torch.Tensor) -> float:
        return float(x.float().mean()) if x.numel() else float("nan")

    return SyncNetAccuracy(
        accuracy=_mean(correct),
        loss=loss,
        num_samples=int(labels.numel()),
        positive_accuracy=_mean(correct[pos]),
        negative_accuracy=_mean(correct[neg]),
        mean_positive_cosine=_mean(cos[pos]),
        mean_negative_cosine=_mean(cos[neg]),
        predicted_positive_rate=_mean(pred),
    )

