"""Visual metrics of the LatentSync paper (section 4.1): PSNR and SSIM in the reconstruction setting (a video
re-synced to its own audio, compared frame by frame with the original), FID and FVD in the cross setting (sets of
generated vs reference videos), and the Fréchet distance they share.

Backbones are pluggable: anything that maps a batch of images ``(N, 3, H, W)`` in ``[0, 1]`` to features ``(N, D)``
serves for FID, anything that maps clips ``(N, 3, T, H, W)`` in ``[0, 1]`` to ``(N, D)`` serves for FVD. The defaults
load the usual weights: the TensorFlow FID Inception ported to PyTorch (``pt_inception-2015-12-05``, the weights
pytorch-fid and torchmetrics use) and the I3D TorchScript of the official LatentSync / StyleGAN-V FVD
(``i3d_torchscript.pt``). Tests swap in tiny random networks.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlparse

import cv2
import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelNotFoundError
from ..face.detection import FaceDetector, largest_face
from ..model_source import download_unavailable_reason, model_file
from ..models.inception import FID_WEIGHTS_URL, FIDInceptionV3
from .config import I3D_FILENAME, I3D_REPO_ID

logger = logging.getLogger(__name__)

PSNR_CAP = 100.0  # dB reported for identical frames (the exact value is infinite)

FrameFeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
VideoFeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------- PSNR / SSIM


def _to_tensor(frames: np.ndarray | Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB uint8 frames ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [0, 1]."""
    arr = np.ascontiguousarray(np.stack(frames) if not isinstance(frames, np.ndarray) else frames)
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def frame_psnr(generated: np.ndarray, reference: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Per-frame PSNR (dB) of RGB uint8 frames ``(N, H, W, 3)``; identical frames give ``PSNR_CAP``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # deferred: optional (eval extra), slow import

    _check_pair(generated, reference)
    a, b = _to_tensor(generated, device), _to_tensor(reference, device)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.nan_to_num(psnr, posinf=PSNR_CAP).clamp_(max=PSNR_CAP).cpu().numpy()


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


@torch.no_grad()
def frame_ssim(generated: np.ndarray, reference: np.ndarray, device: str | torch.device = "cpu",
               window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-frame SSIM of uint8 frames ``(N, H, W, 3)``: Wang et al. 2004 (Gaussian window 11, sigma 1.5, K1 0.01,
    K2 0.03) on RGB in [0, 1], averaged over channels and the positions where the window fits (as the reference
    MATLAB code; torchmetrics also averages over reflect-padded borders, which differs by ~1e-4).

    Variances are computed on frames centred on their mean (SSIM's variance terms do not depend on it), so float32
    stays accurate in flat regions and identical frames score exactly 1.
    """
    _check_pair(generated, reference)
    x, y = _to_tensor(generated, device), _to_tensor(reference, device)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"frames of {tuple(x.shape[-2:])} pixels are smaller than the SSIM window ({window})")
    t = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(v, kh, groups=c), kw, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    centre = (x.mean(dim=(2, 3), keepdim=True) + y.mean(dim=(2, 3), keepdim=True)) / 2
    xc, yc = x - centre, y - centre
    mxc, myc = mu_x - centre, mu_y - centre
    var_x = blur(xc * xc) - mxc * mxc
    var_y = blur(yc * yc) - myc * myc
    cov = blur(xc * yc) - mxc * myc
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).cpu().numpy()


def _check_pair(generated: np.ndarray, reference: np.ndarray) -> None:
    if np.shape(generated) != np.shape(reference):
        raise ValueError(f"frame shapes differ: generated {np.shape(generated)} vs reference {np.shape(reference)}")
    if len(generated) == 0:
        raise ValueError("no frames to compare")


# ----------------------------------------------------------------------------------------------- Fréchet distance


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``(N, D)`` features (N >= 2)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a covariance, got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between two Gaussians: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than dimensions): regularise the diagonal, as pytorch-fid does.
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            logger.warning("Fréchet distance: large imaginary part %.3g in the matrix square root",
                           np.abs(covmean.imag).max())
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


# ----------------------------------------------------------------------------------------------- I3D for FVD


class I3DFeatureExtractor:
    """The I3D TorchScript of the StyleGAN-V / official LatentSync FVD (``i3d_torchscript.pt``, 400-d logits).

    Called with clips ``(N, 3, T, 224, 224)`` in [0, 1]; they are mapped to [-1, 1] and passed with
    ``rescale=False, resize=False, return_features=True`` as in the reference implementations.
    """

    input_size = 224

    def __init__(self, module: torch.nn.Module | torch.jit.ScriptModule):
        self.module = module.eval()

    @classmethod
    def from_pretrained(
        cls, path_or_repo: str = I3D_REPO_ID, filename: str = I3D_FILENAME, device: str | torch.device = "cpu"
    ) -> "I3DFeatureExtractor":
        """Load from a local TorchScript file, ``filename`` in a local folder (a copy of the Hub repository) or
        downloaded from a Hub repository."""
        return cls(torch.jit.load(model_file(path_or_repo, filename), map_location=device))

    def to(self, device: str | torch.device) -> "I3DFeatureExtractor":
        self.module = self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        return self.module(clips * 2 - 1, rescale=False, resize=False, return_features=True)


def load_frame_extractor(spec: str | None = None, device: str | torch.device = "cpu") -> FrameFeatureExtractor:
    """FID backbone from ``spec``: None for the standard FID Inception (downloaded by URL), a ``.pth`` state dict
    of [`FIDInceptionV3`] or its URL, or a TorchScript file mapping ``(N, 3, H, W)`` in [0, 1] to ``(N, D)``."""
    spec = spec or FID_WEIGHTS_URL
    if os.path.isfile(spec) and _is_torchscript(spec):
        return torch.jit.load(spec, map_location=device).eval()
    return FIDInceptionV3.from_pretrained(spec).to(device)


def fid_weights_cache_path(url: str = FID_WEIGHTS_URL) -> str:
    """Where the FID weights downloaded from ``url`` are kept: torch hub's cache, as
    ``torch.hub.load_state_dict_from_url`` names it (``<torch hub dir>/checkpoints/<file name>``; the hub folder is
    ``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def check_fid_weights(spec: str | None = None, instead: str = "pass the path of a local copy") -> None:
    """Before anything loads: FID weights fetched by URL (``spec`` as [`load_frame_extractor`] takes it; None: the
    standard Inception) must be cached, or downloadable now. Other specs are not checked here.

    Raises:
        ModelNotFoundError: one line naming the missing file, where it would be cached, why it cannot be downloaded
            (offline mode, or its host unreachable) and how to provide it (``instead`` is the other way).
    """
    url = spec or FID_WEIGHTS_URL
    if not url.startswith(("http://", "https://")):
        return
    path = fid_weights_cache_path(url)
    if os.path.isfile(path):
        return
    reason = download_unavailable_reason(url)
    if reason is not None:
        raise ModelNotFoundError(
            f"the FID Inception weights {os.path.basename(path)} are not cached ({path}) and cannot be downloaded "
            f"({reason}): download {url} on a machine with a connection and put it at that path (TORCH_HOME moves "
            f"the cache), or {instead}")


def load_video_extractor(spec: str | None = None, device: str | torch.device = "cpu") -> VideoFeatureExtractor:
    """FVD backbone from ``spec``: None for ``i3d_torchscript.pt`` from the LatentSync Hub repository, a local
    TorchScript file with the same call signature, or another Hub repository holding
    ``auxiliary/i3d_torchscript.pt``."""
    return I3DFeatureExtractor.from_pretrained(spec or I3D_REPO_ID, device=device)


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def _input_size(extractor, default: int) -> int:
    size = getattr(extractor, "input_size", None)
    if size is None and isinstance(extractor, torch.jit.ScriptModule):
        try:
            size = int(extractor.input_size)
        except (AttributeError, RuntimeError):
            size = None
    return int(size or default)


def _extractor_device(extractor) -> torch.device:
    module = extractor.module if isinstance(extractor, I3DFeatureExtractor) else extractor
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
    return torch.device("cpu")


def resize_frames(frames: Iterable[np.ndarray], size: int) -> np.ndarray:
    """Resize RGB frames to ``size`` x ``size`` (area interpolation when shrinking), ``(N, size, size, 3)``."""
    out = []
    for f in frames:
        interp = cv2.INTER_AREA if min(f.shape[:2]) > size else cv2.INTER_CUBIC
        out.append(cv2.resize(f, (size, size), interpolation=interp))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


@torch.no_grad()
def backbone_features(items: Iterable[np.ndarray], extractor: FrameFeatureExtractor | VideoFeatureExtractor,
                      batch_size: int | None = None, default_size: int | None = None) -> np.ndarray:
    """Features ``(N, D)`` of RGB uint8 frames ``(H, W, 3)`` with an image backbone, or of clips ``(T, H, W, 3)``
    with a video backbone (told apart by the first item). Frames are resized to the backbone's ``input_size``
    (default 299 for images, 224 for clips) and run ``batch_size`` at a time (default 32 images or 4 clips)."""
    items = iter(items)
    first = next(items, None)
    if first is None:
        return np.zeros((0, 0))
    clips = np.ndim(first) == 4
    size = _input_size(extractor, default_size or (224 if clips else 299))
    batch_size = batch_size or (4 if clips else 32)
    device = _extractor_device(extractor)
    feats, batch = [], []
    for item in itertools.chain([first], items, [None]):
        if item is not None:
            batch.append(item)
        if batch and (len(batch) == batch_size or item is None):
            if clips:  # (N, 3, T, size, size)
                x = torch.stack([_to_tensor(resize_frames(c, size), device).permute(1, 0, 2, 3) for c in batch])
            else:  # (N, 3, size, size)
                x = _to_tensor(resize_frames(batch, size), device)
            feats.append(extractor(x).float().reshape(len(batch), -1).cpu().numpy())
            batch = []
    return np.concatenate(feats)


frame_features = backbone_features  # features of frames (FID)
clip_features = backbone_features  # features of clips (FVD)


def backbone_frechet_distance(generated: Iterable[np.ndarray], reference: Iterable[np.ndarray],
                              extractor: FrameFeatureExtractor | VideoFeatureExtractor,
                              batch_size: int | None = None) -> float:
    """Fréchet distance between the backbone features of two sets (see [`backbone_features`]): FID for RGB uint8
    frames with an image backbone, FVD for clips ``(T, H, W, 3)`` with a video backbone."""
    return frechet_distance_from_features(backbone_features(generated, extractor, batch_size),
                                          backbone_features(reference, extractor, batch_size))


fid_from_frames = backbone_frechet_distance  # FID between two sets of frames
fvd_from_clips = backbone_frechet_distance  # FVD between two sets of clips


def clip_windows(num_frames: int, clip_length: int = 16, start: int = 20, max_clips: int = 1) -> list[int]:
    """Start indices of up to ``max_clips`` non-overlapping ``clip_length``-frame windows from ``start`` (moved
    earlier when the video is too short; empty when it has fewer than ``clip_length`` frames)."""
    if num_frames < clip_length:
        return []
    start = min(start, num_frames - clip_length)
    room = (num_frames - start) // clip_length
    return [start + i * clip_length for i in range(max(1, min(max_clips, room)))]


# ----------------------------------------------------------------------------------------------- face crops


class FaceCropper:
    """Crops the largest face (MediaPipe box, widened by ``margin``) to a square; keeps the last box through frames
    without a detection and falls back to the centred square of the frame when no face was ever seen."""

    def __init__(self, margin: float = 0.1):
        self._detector = FaceDetector()
        self.margin = margin
        self._last: tuple[int, int, int, int] | None = None

    def close(self) -> None:
        self._detector.close()

    def reset(self) -> None:
        self._last = None

    @property
    def found_face(self) -> bool:
        """Whether a face was detected in any frame so far (else the boxes were the centred square)."""
        return self._last is not None

    def box(self, frame: np.ndarray) -> tuple[int, int, int, int]:
        h, w = frame.shape[:2]
        f = largest_face(self._detector.detect(frame))
        if f is not None:
            side = f.size * (1 + 2 * self.margin)
            cx, cy = f.center
            x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
            s = int(round(side))
            x0, y0 = min(max(x0, 0), max(w - s, 0)), min(max(y0, 0), max(h - s, 0))
            self._last = (x0, y0, min(x0 + s, w), min(y0 + s, h))
        if self._last is None:
            s = min(h, w)
            return ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return self._last


def crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Contiguous copy of ``frame[y0:y1, x0:x1]`` for ``box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(frame[y0:y1, x0:x1])


def mean_or_nan(values: Iterable[float]) -> float:
    """Mean of the values that are not None / NaN (NaN when none are left)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")
