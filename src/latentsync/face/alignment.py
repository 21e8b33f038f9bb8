"""Face alignment to LatentSync's template, temporal smoothing, and feathered paste-back.

The official code maps three landmarks (eyebrow centres, nose) with a least-squares similarity transform onto a
fixed template in a 3:4 crop and then squeezes the crop to a square of ``resolution`` pixels. We compose both into
one affine warp. Paste-back blends the generated face into the frame only where the mouth mask asked for new
content, with a soft edge, so pixels outside the lower face stay exactly as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..utils import true_runs
from .mask import mouth_mask

# Template anchors in the official 75 x 100 canvas (scaled by 2.8 * resolution / 256).
_TEMPLATE = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points to ``dst``, 2 x 3."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - scale * rot @ src_mean
    return m


def smoothing_radius(sigma: float) -> int:
    """How many frames on each side [`smooth_anchors`] looks at for a Gaussian of ``sigma`` frames."""
    return int(3 * sigma + 0.5) if sigma > 0 else 0


def smooth_anchors(anchors: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth per-frame anchors ``(N, 3, 2)`` over time; NaN frames (no face) split the runs."""
    if sigma <= 0:
        return anchors.copy()
    out = anchors.copy()
    valid = ~np.isnan(anchors[:, 0, 0])
    radius = smoothing_radius(sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    for i, j in true_runs(valid):
        run = anchors[i:j].reshape(j - i, -1)
        padded = np.pad(run, ((radius, radius), (0, 0)), mode="edge")
        acc = np.zeros_like(run)
        for k, wgt in enumerate(kernel):
            acc += wgt * padded[k : k + len(run)]
        out[i:j] = (acc / kernel.sum()).reshape(j - i, 3, 2)
    return out


class FaceAligner:
    """Warps faces to the ``resolution`` x ``resolution`` template and pastes generated mouths back.

    Args:
        resolution: side of the aligned face (256 for LatentSync 1.5, 512 for 1.6).
        feather: width of the soft edge of the pasted region, as a fraction of ``resolution``.
    """

    def __init__(self, resolution: int = 256, feather: float = 0.04):
        self.resolution = resolution
        ratio = resolution / 256 * 2.8
        crop_w, crop_h = int(75 * ratio), int(100 * ratio)
        self._template = _TEMPLATE * ratio
        self._squeeze = np.diag([resolution / crop_w, resolution / crop_h])
        self.mask = mouth_mask(resolution)
        self.alpha = self._paste_alpha(feather)
        ys, xs = np.nonzero(self.alpha > 1e-3)
        self._alpha_corners = np.array(
            [[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1], [xs.max() + 1, ys.max() + 1]],
            dtype=np.float64,
        )

    def _paste_alpha(self, feather: float) -> np.ndarray:
        width = max(1, int(round(feather * self.resolution)))
        generate = (1.0 - self.mask).astype(np.float32)
        core = cv2.erode(generate, np.ones((width, width), np.uint8))
        k = 2 * width + 1
        return cv2.GaussianBlur(core, (k, k), width / 2.0)

    def matrix(self, anchors: np.ndarray) -> np.ndarray:
        """Affine ``2 x 3`` from frame pixels to aligned-face pixels for anchors ``(3, 2)``."""
        sim = similarity_transform(anchors, self._template)
        return self._squeeze @ sim

    def align(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Aligned face ``(resolution, resolution, 3)`` uint8."""
        return cv2.warpAffine(
            frame, matrix, (self.resolution, self.resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    def align_batch(self, frames: Sequence[np.ndarray], matrices: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned faces ``(N, resolution, resolution, 3)`` uint8 of several frames."""
        return np.stack([self.align(f, m) for f, m in zip(frames, matrices)])

    def paste_region(self, frame_shape: tuple[int, ...], matrix: np.ndarray) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: the part of a frame of ``frame_shape`` that paste-back can change (empty when
        ``x1 <= x0`` or ``y1 <= y0``)."""
        h, w = frame_shape[:2]
        inv = cv2.invertAffineTransform(matrix)
        corners = self._alpha_corners @ inv[:, :2].T + inv[:, 2]
        x0, y0 = np.floor(corners.min(0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        return max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)

    def paste_batch(self, frames: Sequence[np.ndarray], faces: Sequence[np.ndarray],
                    matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[`paste`] for several frames."""
        return [self.paste(f, face, m) for f, face, m in zip(frames, faces, matrices)]

    def paste(self, frame: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Blend the generated aligned ``face`` into a copy of ``frame`` inside the soft mouth region."""
        inv = cv2.invertAffineTransform(matrix)
        x0, y0, x1, y1 = self.paste_region(frame.shape, matrix)
        out = frame.copy()
        if x1 <= x0 or y1 <= y0:
            return out
        roi_inv = inv.copy()
        roi_inv[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        roi_matrix = cv2.invertAffineTransform(roi_inv)
        warped = cv2.warpAffine(face, roi_matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self.alpha, roi_matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)[..., None]
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(region + alpha * (warped.astype(np.float32) - region) + 0.5, 0, 255).astype(
            np.uint8
        )
        return out
