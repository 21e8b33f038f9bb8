"""The face: detection and tracking (which face, NaN rows without one), alignment geometry, smoothing, paste-back
and the mouth mask."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import decode, psnr
from latentsync.face import FaceAligner, FaceBox, FaceDetector, largest_face, mouth_mask, similarity_transform, smooth_anchors


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


# ---------------------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def face_frame(example_face):
    return decode(example_face)[0]


def test_detect_finds_the_face_and_its_anchors_lie_inside_the_box(face_frame):
    with FaceDetector() as det:
        boxes = det.detect(face_frame)
        anchors = det.anchors(face_frame)
    assert len(boxes) == 1 and boxes[0].score > 0.5
    box = boxes[0]
    assert (box.x0 < anchors[:, 0]).all() and (anchors[:, 0] < box.x1).all()
    assert (box.y0 < anchors[:, 1]).all() and (anchors[:, 1] < box.y1).all()
    left_brow, right_brow, nose = anchors
    assert left_brow[0] < nose[0] < right_brow[0] and nose[1] > max(left_brow[1], right_brow[1])


def test_no_face_gives_no_box_and_no_anchors():
    blank = np.full((256, 256, 3), 90, np.uint8)
    with FaceDetector() as det:
        assert det.detect(blank) == [] and det.anchors(blank) is None


def test_face_index_chooses_from_the_left_and_then_tracks_that_face(face_frame):
    two = np.concatenate([face_frame, face_frame], axis=1)  # the same face twice, side by side
    width = face_frame.shape[1]
    with FaceDetector() as det:
        assert len(det.detect(two)) == 2
    for index, side in ((0, lambda x: x < width), (1, lambda x: x > width)):
        with FaceDetector(face_index=index) as det:
            first, again = det.anchors(two), det.anchors(two)
        assert side(first[:, 0]).all() and np.allclose(first, again)
    with FaceDetector(face_index=2) as det:  # no third face
        assert det.anchors(two) is None


def test_largest_face_by_area():
    small, large = FaceBox(0, 0, 10, 10, 0.9), FaceBox(50, 50, 80, 70, 0.6)
    assert largest_face([small, large]) is large and largest_face([]) is None
    assert large.size == 30 and large.area == 600 and np.allclose(large.center, [65, 60])
