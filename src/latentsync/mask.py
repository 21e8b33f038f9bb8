"""The fixed lower-face mask of LatentSync (1 = keep, 0 = region to generate).

Drawn from the geometry of the official ``mask.png`` (spec section 3.4) on a 256 x 256 grid: the generated region
spans rows 128-242 across nearly the full width and narrows to an arc at the chin, plus the two cheeks at rows
95-127 beside the nose, about 40 % of the face. Other resolutions resize it.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

_BASE = 256


@functools.lru_cache(maxsize=8)
def mouth_mask(resolution: int = 256) -> np.ndarray:
    """Float32 ``(resolution, resolution)`` mask in [0, 1]: 1 keeps the input face, 0 is inpainted."""
    yy, xx = np.mgrid[0:_BASE, 0:_BASE].astype(np.float32)
    left, right, cx = 9.0, 247.0, 128.0
    half_width = (right - left) / 2
    top, straight_until, bottom = 128.0, 140.0, 243.0
    # lower face: full width down to the jaw, then an elliptical arc to the chin
    t = np.clip((yy - straight_until) / (bottom - straight_until), 0.0, 1.0)
    arc_half = half_width * np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))
    lower = (yy >= top) & (yy < bottom) & (np.abs(xx - cx) <= arc_half)
    cheeks = (yy >= 95) & (yy < top) & (((xx >= left) & (xx <= 77)) | ((xx >= 178) & (xx <= right - 1)))
    mask = np.where(lower | cheeks, 0.0, 1.0).astype(np.float32)
    if resolution != _BASE:
        mask = cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
    mask.setflags(write=False)
    return mask
