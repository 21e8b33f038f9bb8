"""Face alignment geometry, smoothing, paste-back, mask and looping order."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import decode, psnr
from latentsync.face import FaceAligner, similarity_transform, smooth_anchors
from latentsync.face import FaceDetector
from latentsync.face import mouth_mask
from latentsync.streaming import pingpong_indices


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (3, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], scale * rot) and np.allclose(m[:, 2], shift)


def test_smoothing_keeps_gaps_and_reduces_jitter():
    rng = np.random.default_rng(0)
    base = np.tile(np.array([[10.0, 20.0], [50.0, 20.0], [30.0, 40.0]]), (40, 1, 1))
    noisy = base + rng.normal(0, 2.0, base.shape)
    noisy[15:18] = np.nan
    out = smooth_anchors(noisy, sigma=1.5)
    assert np.isnan(out[15:18]).all() and not np.isnan(out[:15]).any() and not np.isnan(out[18:]).any()
    assert np.abs(out[20:38] - base[20:38]).std() < 0.6 * np.abs(noisy[20:38] - base[20:38]).std()
    assert np.array_equal(smooth_anchors(noisy, 0), noisy, equal_nan=True)
    const = smooth_anchors(base, 2.0)
    assert np.allclose(const, base)


def test_mask_convention_and_area():
    m = mouth_mask(256)
    assert m.shape == (256, 256) and m.dtype == np.float64
    assert 0.40 < 1 - m.mean() < 0.42  # about 41 % of the face is regenerated
    assert m[200, 128] == 0 and m[60, 128] == 1 and m[110, 128] == 1 and m[110, 30] == 0  # mouth, eyes, nose, cheek
    assert mouth_mask(512).shape == (512, 512)


def test_align_and_paste_touch_only_the_lower_face(example_face):
    frame = decode(example_face)[0]
    with FaceDetector() as det:
        anchors = det.anchors(frame)
    assert anchors is not None
    aligner = FaceAligner(256)
    matrix = aligner.matrix(anchors)
    face = aligner.align(frame, matrix)
    assert face.shape == (256, 256, 3)
    # the anchors land on the template
    mapped = anchors @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(mapped[:2, 1], mapped[0, 1], atol=8) and mapped[2, 1] > mapped[0, 1]

    same = aligner.paste(frame, face, matrix)  # pasting the face back onto itself changes little
    assert psnr(same, frame) > 35
    red = np.zeros_like(face)
    red[..., 0] = 255
    pasted = aligner.paste(frame, red, matrix)
    changed = np.abs(pasted.astype(int) - frame).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    eyes_y = anchors[:2, 1].mean()
    assert ys.min() > eyes_y  # nothing above the eyebrows changes
    nose = anchors[2]
    assert changed[int(nose[1]) + 25, int(nose[0])]  # the mouth below the nose was replaced
    assert not changed[:, : int(xs.min())].any() and not changed[: int(ys.min())].any()


def test_pingpong_order():
    assert pingpong_indices(4, 3).tolist() == [0, 1, 2]
    assert pingpong_indices(3, 10).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("motion", ["all", "decoder", "none"])
def test_unet_frame_pooled_norm_couples_frames(motion):
    import torch

    from latentsync.testing import build_tiny_pipeline

    torch.manual_seed(0)
    unet = build_tiny_pipeline(motion_modules=motion).unet.double()
    x = torch.randn(1, 13, 6, 8, 8, dtype=torch.float64)
    ctx = torch.randn(6, 30, 64, dtype=torch.float64)
    full = unet(x, 500, ctx).sample
    first = unet(x[:, :, :3], 500, ctx[:3]).sample
    # official behaviour: ResNet statistics pool the clip, so a frame's output depends on the other frames
    assert not torch.allclose(full[:, :, :3], first, atol=1e-6)
    assert full.shape == (1, 4, 6, 8, 8)


def test_track_gives_nan_rows_for_frames_without_a_face(example_face):
    frames = decode(example_face)[:3]
    blank = np.zeros_like(frames[0])
    with FaceDetector() as det:
        track = det.track([frames[0], blank, frames[1]])
    with FaceDetector() as det:
        first = det.anchors(frames[0])
    assert track.shape == (3, 3, 2)
    assert np.allclose(track[0], first) and np.isnan(track[1]).all() and np.isfinite(track[2]).all()
    with FaceDetector() as det:
        assert det.track([]).shape == (0, 3, 2)
