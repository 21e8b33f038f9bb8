"""The video passes of the pipeline (latentsync.streaming): output order and looping, the frame cache, windows,
the paste-and-write sink, and the thread helpers."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import decode
from latentsync.errors import NoFaceError
from latentsync.media import iter_frames, open_frames
from latentsync.streaming import LatentCache, OrderedWorker, VideoStream, pingpong_indices, prefetch
from latentsync.utils import StageTimer

RESOLUTION = 64


@pytest.fixture(scope="module")
def face_frames(example_face):
    return decode(example_face)[:20]  # 20 frames of 384 x 384 with a face


def _stream(frames, num_output: int, **kw) -> VideoStream:
    return VideoStream(open_frames(frames), num_output, RESOLUTION, progress=lambda it, desc, total: _Bar(it), **kw)


class _Bar(list):
    """A silent progress bar."""

    def __init__(self, iterable):
        super().__init__(iterable or [])

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def test_pingpong_order():
    assert pingpong_indices(4, 3).tolist() == [0, 1, 2]
    assert pingpong_indices(3, 10).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]


def test_latent_cache_keeps_entries_until_their_last_use():
    cache = LatentCache(Counter({0: 1, 1: 2}))
    t = torch.zeros(4, 2, 2)
    cache.put(0, t, t)
    cache.put(1, t, t)
    assert cache.get(0) is None and cache.get(1) is not None  # frame 0 is never needed again
    cache.release(1)
    assert cache.get(1) is not None
    cache.release(1)
    assert cache.get(1) is None and not cache.entries


def test_analysis_windows_and_sink_of_a_looping_video(face_frames):
    frames = list(face_frames)
    frames[3] = np.full_like(frames[3], 128)  # one frame without a face
    timer = StageTimer()
    with _stream(frames, 30, overlap_stages=False, timer=timer) as stream:
        stream.analyze()
        assert stream.num_source_frames == 20 and stream.loops and stream.cache_path is None
        assert stream.order.tolist() == pingpong_indices(20, 30).tolist()
        assert not stream.has_face[3] and stream.has_face[[0, 2, 4, 19]].all()
        stream.open_output(None, None, np.zeros(1), keep_frames=True)
        windows = list(stream.windows(16))
        assert [w.start for w in windows] == [0, 16] and [len(w.frames) for w in windows] == [16, 14]
        [first] = windows[0].groups  # one voice
        assert first.voice == 0 and first.slots == [k for k in range(16) if k != 3]
        assert first.faces.shape == (15, RESOLUTION, RESOLUTION, 3)
        assert first.frame_indices.tolist() == first.slots and first.sources == first.slots
        assert windows[1].groups[0].sources == pingpong_indices(20, 30)[16:].tolist()  # 16..19, then 19 back to 10
        for window in windows:
            stream.write(window, None)  # nothing regenerated: the frames pass through
        kept = stream.finish()
        assert stream.frames_submitted == 30 and stream.frames_without_face == 1
        assert stream.latent_cache().uses[15] == 2 and stream.latent_cache().uses[3] == 0
    assert len(kept) == 30 and all(np.array_equal(kept[i], frames[j]) for i, j in enumerate(pingpong_indices(20, 30)))
    assert {"decode", "face_detection", "alignment", "paste_back", "encode"} <= set(timer.as_dict())


def test_tail_and_disk_cache_give_the_same_frames(face_frames, monkeypatch):
    def frames_in_order(max_tail: int) -> tuple[list[np.ndarray], bool]:
        monkeypatch.setattr(VideoStream, "max_tail_frames", max_tail)
        with _stream(list(face_frames), 35) as stream:
            stream.analyze()
            return list(stream.frames_in_order()), stream.cache_path is not None

    in_memory, used_disk = frames_in_order(32)
    from_disk, used_disk_too = frames_in_order(0)
    assert not used_disk and used_disk_too
    assert len(in_memory) == len(from_disk) == 35
    assert all(np.array_equal(a, b) for a, b in zip(in_memory, from_disk))


def test_pasted_faces_are_written_to_the_file(face_frames, tmp_path):
    out = tmp_path / "out.mp4"
    with _stream(list(face_frames[:8]), 8) as stream:
        stream.analyze()
        stream.open_output(out, None, np.zeros(8 * 640, np.float32), keep_frames=True)
        for window in stream.windows(4):
            stream.write(window, [np.zeros_like(g.faces) for g in window.groups])  # black mouths
        kept = stream.finish()
    written = np.stack(list(iter_frames(out, None)))
    assert written.shape[0] == 8 and not np.array_equal(kept[0], face_frames[0])
    assert np.abs(written.astype(int) - np.stack(kept)).mean() < 3  # the same frames, up to the codec


def test_an_error_leaves_no_output_and_no_face_is_an_error(face_frames, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with _stream(list(face_frames[:8]), 8) as stream:
            stream.analyze()
            stream.open_output(out, None, np.zeros(8 * 640, np.float32))
            for window in stream.windows(4):
                stream.write(window, None)
                raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(NoFaceError, match="no face"):
        with _stream([np.full((64, 64, 3), 90, np.uint8)] * 4, 4) as stream:
            stream.analyze()


def test_prefetch_keeps_order_runs_ahead_and_reraises():
    produced = []

    def items():
        for i in range(6):
            produced.append(i)
            yield i

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 4  # bounded: at most depth items ahead of the consumer (plus one in hand)
    assert list(it) == [1, 2, 3, 4, 5]

    def failing():
        yield 1
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        list(prefetch(failing()))


def test_ordered_worker_runs_in_order_and_reraises():
    done, lock = [], threading.Lock()

    def work(i):
        time.sleep(0.01 * (3 - i % 3))
        with lock:
            done.append(i)

    worker = OrderedWorker(work, depth=2)
    for i in range(6):
        worker.submit(i)
    worker.close()
    assert done == list(range(6))

    def fail(i):
        raise OSError(f"disk full at {i}")

    worker = OrderedWorker(fail, depth=1)
    worker.submit(0)
    with pytest.raises(OSError, match="disk full"):
        worker.submit(1)
        worker.close()


def test_a_run_reads_and_writes_the_speech_track_of_a_file_with_several(two_track_video, tmp_path):
    """``latentsync --audio rec.mp4`` with a screen recording whose first audio track is silent and whose second
    holds the voice: the checks pass, the voice is lip-synced and it is the output's sound (at its own quality). The
    run was refused as silent audio, and the written file would have carried the silent first track."""
    import subprocess

    from conftest import FFMPEG, shared_file

    from latentsync.inputs import check_run_inputs
    from latentsync.media import as_samples, load_audio, probe_video
    from latentsync.streaming import FrameWindow

    out = tmp_path / "out.mp4"
    checked = check_run_inputs(two_track_video, two_track_video, out)
    assert abs(checked.audio.duration - 2.0) < 0.1 and not checked.audio.silent
    samples = as_samples(two_track_video)
    speech = load_audio(shared_file("demo1_video.mp4"))[: len(samples)]
    n = len(samples) - 500
    assert np.corrcoef(samples[500:n], speech[500:n])[0, 1] > 0.99
    frames = [np.full((64, 64, 3), 100, np.uint8)] * 50
    with _stream(frames, 50, overlap_stages=False) as stream:
        stream.open_output(out, two_track_video, samples)
        stream.write(FrameWindow(0, np.arange(50), list(frames), []), None)
        stream.finish()
    assert probe_video(out).audio_tracks == 1
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", str(out)], capture_output=True, text=True,
                            check=False).stderr
    assert "Audio: aac" in header and "44100 Hz" in header  # the source's track, not a 16 kHz copy of the samples
    sound = load_audio(out)
    n = min(len(sound), len(speech)) - 500
    assert np.corrcoef(sound[500:n], speech[500:n])[0, 1] > 0.99
