"""The fixed lower-face mask of LatentSync (1 = keep the input face, 0 = region the model regenerates).

The mask is the official ``mask.png`` (shipped in ``latentsync/assets`` with its Apache-2.0 notice): a 256 x 256
binary image whose dark region covers the lower face from the cheeks beside the nose down to the chin, about 41 % of
the face. It is built for any face size exactly as the official code builds it, because the released weights were
trained and evaluated on those values: the 8-bit RGB image is resized with Lanczos interpolation (8-bit output, so
the ringing near the edge at 512 px leaves values like 1/255 and 254/255), divided by 255 (float64, no clamping
or thresholding) and its first channel kept. The U-Net's mask channel is that mask nearest-downsampled to the latent
grid (:func:`latent_mouth_mask`).
"""

from __future__ import annotations

import functools
from importlib import resources

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MASK_ASSET = "mouth_mask.png"


@functools.lru_cache(maxsize=1)
def _mask_image() -> np.ndarray:
    """The shipped 256 x 256 RGB uint8 mask image."""
    data = resources.files("latentsync").joinpath("assets", MASK_ASSET).read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:  # a broken install, not a user error
        raise RuntimeError(f"latentsync/assets/{MASK_ASSET} is missing or unreadable; reinstall the package")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@functools.lru_cache(maxsize=8)
def mouth_mask(resolution: int = 256) -> np.ndarray:
    """Read-only float64 ``(resolution, resolution)`` mask: 1 keeps the input face, 0 is regenerated."""
    image = _mask_image()
    if resolution != image.shape[0]:
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    mask = np.ascontiguousarray(image[..., 0] / 255.0)
    mask.setflags(write=False)
    return mask


def latent_mouth_mask(resolution: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """The U-Net's mask channel: :func:`mouth_mask` nearest-downsampled to ``latent_size``, shape ``(1, 1, h, w)``,
    float64 (cast it to the model's dtype where it is used)."""
    mask = torch.from_numpy(np.array(mouth_mask(resolution)))[None, None]
    return F.interpolate(mask, size=latent_size, mode="nearest")
