"""Face alignment and paste-back as batched torch warps (``grid_sample``), to run on the GPU.

On a GPU machine OpenCV's per-frame warps on the CPU can hold the denoiser up. [`warp_affine`] does the same
bilinear affine warp for a batch of images on any torch device. It reproduces the installed OpenCV's sampling, which
keeps the two within one grey level of each other (the rest is fixed-point against float rounding): OpenCV 4 rounds
every source position to the nearest 1/32 of a pixel before interpolating, and so does [`warp_affine`] there;
OpenCV 5 samples at the exact position (up to 1.7 grey levels closer to the exact bilinear value).
[`TorchFaceAligner`] is a [`~latentsync.face.alignment.FaceAligner`] whose ``align_batch`` and ``paste_batch`` run
there.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .alignment import FaceAligner

__all__ = ["TorchFaceAligner", "warp_affine"]

_SUBPIXEL = 32  # OpenCV's INTER_TAB_SIZE: source positions are rounded to 1/32 pixel
_FIXED = 1024  # OpenCV's AB_SCALE: positions are first computed in 1/1024 pixel
_OPENCV_ROUNDS_POSITIONS = int(cv2.__version__.split(".")[0]) < 5  # OpenCV 5 samples at the exact position


def warp_affine(images: torch.Tensor, maps: torch.Tensor, size: tuple[int, int], border: str = "replicate",
                origins: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear affine warp of a batch, as ``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP)``.

    Args:
        images: ``(N, C, H, W)`` float.
        maps: ``(N, 2, 3)``: output pixel ``(x, y)`` -> source pixel ``maps @ (x, y, 1)`` (the inverse of the
            matrix ``cv2.warpAffine`` takes without ``WARP_INVERSE_MAP``).
        size: ``(width, height)`` of the output.
        border: ``"replicate"`` (edge pixels continue) or ``"zeros"`` (black outside).
        origins: ``(N, 2)`` output pixel coordinates of each output's top-left corner (default 0): a crop of a larger
            output.

    Returns:
        ``(N, C, height, width)`` float, unrounded.
    """
    n, _, h_in, w_in = images.shape
    w, h = size
    maps = maps.to(images.device, torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device, dtype=torch.float64),
                            torch.arange(w, device=images.device, dtype=torch.float64), indexing="ij")
    if origins is not None:  # a crop: fold its corner into the translation, as OpenCV warps a region of interest
        origins = origins.to(images.device, torch.float64)
        maps = maps.clone()
        maps[:, :, 2] += maps[:, :, 0] * origins[:, None, 0] + maps[:, :, 1] * origins[:, None, 1]
    src = []
    for row in range(2):
        a, b, c = maps[:, row, 0, None, None], maps[:, row, 1, None, None], maps[:, row, 2, None, None]
        if _OPENCV_ROUNDS_POSITIONS:
            # OpenCV 4: the position in 1/1024 pixel as round(a * x) + round(b * y + c), then rounded to 1/32 pixel
            fixed = torch.round(a * xs * _FIXED) + torch.round((b * ys + c) * _FIXED)
            step = _FIXED // _SUBPIXEL
            src.append(torch.floor((fixed + step // 2) / step) / _SUBPIXEL)
        else:  # OpenCV 5: the exact position
            src.append(a * xs + b * ys + c)
    # grid_sample's normalised coordinates with align_corners=False: pixel centre x sits at (2x + 1) / W - 1
    grid = torch.stack([(2 * src[0] + 1) / w_in - 1, (2 * src[1] + 1) / h_in - 1], dim=-1).to(images.dtype)
    padding = {"replicate": "border", "zeros": "zeros"}[border]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _inverse_maps(matrices: Sequence[np.ndarray]) -> torch.Tensor:
    """``(N, 2, 3)`` inverses of forward affine matrices (float64)."""
    full = np.zeros((len(matrices), 3, 3))
    full[:, :2] = np.asarray(matrices, dtype=np.float64)
    full[:, 2, 2] = 1
    return torch.from_numpy(np.linalg.inv(full)[:, :2])


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255).to(torch.uint8)


class TorchFaceAligner(FaceAligner):
    """[`FaceAligner`] whose batched alignment and paste-back are torch warps on ``device`` (within one grey level
    of the OpenCV ones; the per-frame ``align`` and ``paste`` stay OpenCV's)."""

    def __init__(self, resolution: int = 256, feather: float = 0.04, device: str | torch.device = "cuda"):
        super().__init__(resolution, feather)
        self.device = torch.device(device)
        self._alpha_t = torch.from_numpy(self.alpha)[None, None].to(self.device)

    def align_batch(self, frames: Sequence[np.ndarray], matrices: Sequence[np.ndarray]) -> np.ndarray:
        # only the part of each frame that the face is sampled from travels to the device: the box around the
        # aligned square's corners mapped back into the frame, two pixels wider, extended at the frame's edges by
        # repeating them (as the replicated border does)
        maps = _inverse_maps(matrices)
        r = self.resolution
        corners = np.array([[0, 0, 1], [r, 0, 1], [0, r, 1], [r, r, 1]], np.float64)
        boxes = []
        for frame, m in zip(frames, maps.numpy()):
            pts = corners @ m.T
            h, w = frame.shape[:2]
            x0, y0 = (np.clip(np.floor(pts.min(0)) - 2, 0, [w - 1, h - 1])).astype(int)
            x1, y1 = (np.clip(np.ceil(pts.max(0)) + 3, [x0 + 1, y0 + 1], [w, h])).astype(int)
            boxes.append((x0, y0, x1, y1))
        width = max(b[2] - b[0] for b in boxes)
        height = max(b[3] - b[1] for b in boxes)
        crops = np.stack([np.pad(f[y0:y1, x0:x1], ((0, height - (y1 - y0)), (0, width - (x1 - x0)), (0, 0)), "edge")
                          for f, (x0, y0, x1, y1) in zip(frames, boxes)])
        shift = torch.tensor([[b[0], b[1]] for b in boxes], dtype=torch.float64)
        maps = maps.clone()
        maps[:, :, 2] -= shift  # source positions inside the crops
        images = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
        out = warp_affine(images, maps, (r, r), "replicate")
        return _to_uint8(out).permute(0, 2, 3, 1).cpu().numpy()

    def paste_batch(self, frames: Sequence[np.ndarray], faces: Sequence[np.ndarray],
                    matrices: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = [frame.copy() for frame in frames]
        regions = [self.paste_region(f.shape, m) for f, m in zip(frames, matrices)]
        todo = [k for k, (x0, y0, x1, y1) in enumerate(regions) if x1 > x0 and y1 > y0]
        if not todo:
            return out
        # one crop size for the batch: the largest region; smaller regions are extended to the right and bottom
        # (the extra pixels lie outside the soft mask and stay as they are; those past the frame's edge are dropped)
        width = max(regions[k][2] - regions[k][0] for k in todo)
        height = max(regions[k][3] - regions[k][1] for k in todo)
        origins = [regions[k][:2] for k in todo]
        crops = np.zeros((len(todo), height, width, 3), np.uint8)
        for n, (k, (x0, y0)) in enumerate(zip(todo, origins)):
            part = frames[k][y0 : y0 + height, x0 : x0 + width]
            crops[n, : part.shape[0], : part.shape[1]] = part
        maps = torch.from_numpy(np.asarray([matrices[k] for k in todo], dtype=np.float64))
        origin_t = torch.tensor(origins, dtype=torch.float64)
        face_t = torch.from_numpy(np.stack([faces[k] for k in todo])).to(self.device).permute(0, 3, 1, 2).float()
        warped = _to_uint8(warp_affine(face_t, maps, (width, height), "replicate", origin_t)).float()
        alpha = warp_affine(self._alpha_t.expand(len(todo), -1, -1, -1), maps, (width, height), "zeros", origin_t)
        region = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float()
        blended = torch.floor((region + alpha * (warped - region) + 0.5).clamp_(0, 255)).to(torch.uint8)
        blended = blended.permute(0, 2, 3, 1).cpu().numpy()
        for n, (k, (x0, y0)) in enumerate(zip(todo, origins)):
            target = out[k][y0 : y0 + height, x0 : x0 + width]
            target[...] = blended[n, : target.shape[0], : target.shape[1]]
        return out
