"""`latentsync prepare`: clip planning, filters, quality scorers, and the whole command on cuts of the shared clips
(parallel, resumable, datasets output)."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ffmpeg

from latentsync.data import prepare as P
from latentsync.data.prepare.process import PlannedClip, _finish_clip
from latentsync.data.quality import HyperIQAScorer, SharpnessScorer, load_quality_scorer
from latentsync.errors import LatentSyncInputError
from latentsync.media import SAMPLES_PER_FRAME
from latentsync.models import HyperIQA

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SPF = SAMPLES_PER_FRAME


# ---------------------------------------------------------------------------------------------------- planning


def test_plan_clips():
    face = np.ones(100, bool)
    # one 100-frame run, clips of 20..40 frames -> ceil(100 / 40) = 3 equal clips
    clips, dropped = P.plan_clips(face, [], 20, 40)
    assert clips == [(0, 33), (33, 67), (67, 100)] and dropped == {"no_face": 0, "too_short": 0}
    # a cut at 90 leaves a 10-frame scene (too short); frames without a face split runs
    face[50:55] = False
    clips, dropped = P.plan_clips(face, [90], 20, 40)
    assert clips == [(0, 25), (25, 50), (55, 90)]
    assert dropped == {"no_face": 5, "too_short": 10}
    # when equal pieces would be too short, max-length clips are cut and the rest dropped
    clips, dropped = P.plan_clips(np.ones(45, bool), [], 30, 40)
    assert clips == [(0, 40)] and dropped["too_short"] == 5
    assert P.plan_clips(np.zeros(10, bool), [], 1, 5) == ([], {"no_face": 10, "too_short": 0})


def test_video_key_and_find_videos(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/b/x y.mp4", "a/z.MOV", "notes.txt", "a/.hidden.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert P.find_videos(str(tmp_path)) == ["a/b/x y.mp4", "a/z.MOV"]
    k1, k2 = P.video_key("a/b/x y.mp4"), P.video_key("c/x y.mp4")
    assert k1.startswith("x_y-") and k1 != k2 and k1 == P.video_key("a/b/x y.mp4")
    with pytest.raises(LatentSyncInputError, match="not found"):
        P.find_videos(str(tmp_path / "missing"))
    with pytest.raises(LatentSyncInputError, match="min_seconds"):
        P.PrepareConfig(min_seconds=5, max_seconds=2)


class FakeSync:
    default_min_confidence = 3.0

    def __init__(self, offset, confidence):
        self.offset, self.confidence = offset, confidence

    def __call__(self, faces, audio, start):
        return self.offset, self.confidence


def test_finish_clip_filters_and_offset_correction(tmp_path):
    """Drop reasons of the sync and quality steps, and the written clip's audio re-cut by the offset."""
    from latentsync.media import load_audio
    from latentsync.media import iter_frames

    rng = np.random.default_rng(0)
    faces = [cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
             for _ in range(20)]
    audio = (0.3 * np.sin(np.arange(200 * SPF) / 16000 * 2 * np.pi * 440 * (1 + np.arange(200 * SPF) / 64000))
             ).astype(np.float32)
    cfg = P.PrepareConfig(min_seconds=0.5, max_seconds=1)

    def run(sync, scorer):
        result = {"key": "v", "source": "v.mp4", "clips": [], "dropped": {}}
        _finish_clip(result, PlannedClip(0, 50, 70, faces), audio, str(tmp_path), cfg, sync, scorer)
        return result

    assert run(FakeSync(7, 9.0), SharpnessScorer())["dropped"] == {"sync_offset": {"count": 1, "seconds": 0.8}}
    assert run(FakeSync(0, 2.0), SharpnessScorer())["dropped"] == {"low_sync_confidence": {"count": 1, "seconds": 0.8}}
    assert list(run(FakeSync(0, 9.0), SharpnessScorer(threshold=1e9))["dropped"]) == ["low_quality"]
    kept = run(FakeSync(-4, 9.0), SharpnessScorer())
    assert not kept["dropped"] and len(kept["clips"]) == 1
    clip = kept["clips"][0]
    assert clip["sync_offset"] == -4 and clip["num_frames"] == 20 and clip["start"] == 2.0
    path = tmp_path / clip["file"]
    assert len(list(iter_frames(str(path), fps=None))) == 20
    written = load_audio(str(path))
    expected = P.shifted_audio(audio, 50, 70, -4)
    n = min(len(written), len(expected)) - 2000  # AAC priming / padding at the ends
    lag = int(np.argmax(np.correlate(written[1000:n], expected[1000:n], mode="full"))) - (n - 1000 - 1)
    assert abs(lag) < 200  # the re-cut audio (not the unshifted one, 2560 samples away) is in the clip
    assert np.corrcoef(written[1000:n], expected[1000:n])[0, 1] > 0.9


# ---------------------------------------------------------------------------------------------------- quality


def test_quality_scorers(tmp_path):
    rng = np.random.default_rng(0)
    sharp = [cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
             for _ in range(5)]
    blurred = [cv2.GaussianBlur(f, (0, 0), 3) for f in sharp]
    scorer = load_quality_scorer("sharpness")
    assert isinstance(scorer, SharpnessScorer)
    assert scorer(sharp) > scorer.threshold > scorer(blurred)
    with pytest.raises(ValueError, match="unknown quality scorer"):
        load_quality_scorer("nima")

    # the hyperIQA loader on random weights saved under the official file name
    torch.manual_seed(0)
    net = HyperIQA().eval()
    path = tmp_path / "koniq_pretrained.pkl"
    torch.save(net.state_dict(), path)
    loaded = load_quality_scorer(str(path), threshold=10.0)
    assert isinstance(loaded, HyperIQAScorer) and loaded.threshold == 10.0
    score = loaded(sharp[:1])
    assert np.isfinite(score)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), net(x), atol=1e-5)
    # hyperiqa:DIR, a local copy of the Hub repository (DIR/auxiliary/koniq_pretrained.pkl), as the offline message
    # advises: it was taken for a Hub id ("Repo id must be in the form 'repo_name' or 'namespace/repo_name'")
    (tmp_path / "ckpt" / "auxiliary").mkdir(parents=True)
    shutil.copy(path, tmp_path / "ckpt" / "auxiliary" / "koniq_pretrained.pkl")
    from_folder = load_quality_scorer(f"hyperiqa:{tmp_path / 'ckpt'}")
    with torch.no_grad():
        assert torch.allclose(from_folder.model(x), net(x), atol=1e-5)


def test_quality_hyperiqa_offline_advice_works(tmp_path, monkeypatch):
    """Offline without the hyperIQA weights, the one line advises ``--quality=DIR``, and a folder holding
    ``auxiliary/koniq_pretrained.pkl`` (a local copy of the Hub repository) is accepted as ``--quality``. The line
    advised "--quality hyperiqa=DIR", which is no setting: "unknown quality scorer 'hyperiqa=DIR'"."""
    from huggingface_hub import constants

    from latentsync.errors import ModelNotFoundError

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the Hub cannot be reached, the cache is empty
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.fspath(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ModelNotFoundError) as missing:
        load_quality_scorer("hyperiqa")
    assert "--quality=ByteDance/LatentSync-1.5 (auxiliary/koniq_pretrained.pkl)" in str(missing.value)
    assert "(e.g. --quality=DIR)" in str(missing.value) and "hyperiqa=" not in str(missing.value)
    (tmp_path / "ckpt" / "auxiliary").mkdir(parents=True)
    torch.save(HyperIQA().state_dict(), tmp_path / "ckpt" / "auxiliary" / "koniq_pretrained.pkl")
    assert isinstance(load_quality_scorer(str(tmp_path / "ckpt")), HyperIQAScorer)


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    if not os.path.isdir(DATA):
        pytest.skip(f"shared test clips not found at {os.path.abspath(DATA)}")
    raw = tmp_path_factory.mktemp("raw")
    (raw / "sub").mkdir()
    ffmpeg("-i", os.path.join(DATA, "demo1_video.mp4"), "-t", "2", "-c", "copy", str(raw / "demo1.mp4"))
    ffmpeg("-i", os.path.join(DATA, "demo2_video.mp4"), "-t", "2", "-c", "copy", str(raw / "sub" / "demo2.mp4"))
    ffmpeg("-i", os.path.join(DATA, "demo1_video.mp4"), "-t", "1", "-an", "-c", "copy", str(raw / "mute.mp4"))
    (raw / "broken.mp4").write_bytes(b"this is not a video")
    return raw


@pytest.fixture(scope="module")
def tiny_syncnet(tiny_syncnet_dir):
    return str(tiny_syncnet_dir)


def _end_to_end_config(tiny_syncnet: str) -> P.PrepareConfig:
    return P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, syncnet=tiny_syncnet, min_sync_confidence=0.0,
                           max_sync_offset=15, quality="sharpness")


@pytest.fixture(scope="module")
def local_prepared(raw_folder, tiny_syncnet, tmp_path_factory):
    """The local engine (2 worker processes) on the raw folder: ``(output folder, summary)``; tests that change the
    output work on a copy."""
    out = tmp_path_factory.mktemp("local") / "prepared"
    return out, P.prepare_dataset(str(raw_folder), str(out), _end_to_end_config(tiny_syncnet), num_workers=2)


def test_prepare_end_to_end_resumable(raw_folder, tiny_syncnet, local_prepared, tmp_path):
    import datasets

    out = tmp_path / "prepared"
    shutil.copytree(local_prepared[0], out)  # keeps the state files' times
    cfg, summary = _end_to_end_config(tiny_syncnet), local_prepared[1]

    assert summary.videos == 4 and summary.videos_done == 2 and summary.videos_failed == 2
    assert summary.dropped["unreadable"]["count"] == 1 and summary.dropped["no_audio"]["count"] == 1
    # each 2 s cut (about 50 frames with audio, one scene, a face throughout) gives ceil(50 / 30) = 2 clips that use
    # every frame with audio (a stream-copied cut can have a few more video frames than audio: audio_ends_early)
    assert summary.clips == 4, summary.table()
    assert {"unreadable", "no_audio"} <= set(summary.dropped) <= {"unreadable", "no_audio", "audio_ends_early"}
    assert summary.dropped.get("audio_ends_early", {"count": 0})["count"] == 0  # frames, not videos or clips
    assert 3.9 <= summary.clip_seconds <= summary.source_seconds
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert len(ds) == 4
    assert set(ds.column_names) >= {"id", "video", "source", "start", "end", "num_frames", "sync_offset",
                                    "sync_confidence", "quality_score", "quality_scorer"}
    assert sorted(set(ds["source"])) == ["demo1.mp4", "sub/demo2.mp4"]
    row = ds[0]
    frames, audio = P.decode_clip(row["video"])
    assert frames.shape == (row["num_frames"], 256, 256, 3)
    assert abs(len(audio) - row["num_frames"] * SPF) < 2 * SPF
    assert all(abs(o) <= 15 for o in ds["sync_offset"]) and all(np.isfinite(ds["sync_confidence"]))
    assert all(q > 8 for q in ds["quality_score"]) and set(ds["quality_scorer"]) == {"sharpness"}
    assert (out / "summary.md").read_text().count("dropped: ") == len(summary.dropped)
    assert "| dropped: no_audio (no audio stream, or one that cannot be decoded) | 1 video |" in (
        out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["clips"] == 4
    # the first clip of demo1 starts with source frame 0 aligned to the template
    from latentsync.face import FaceAligner
    from latentsync.eval.metrics import frame_psnr
    from latentsync.face import FaceDetector
    from latentsync.media import iter_frames

    first = next(r for r in ds if r["source"] == "demo1.mp4" and r["start"] == 0)
    clip_frames, _ = P.decode_clip(first["video"])
    source = next(iter(iter_frames(str(raw_folder / "demo1.mp4"))))
    with FaceDetector() as det:
        anchors = det.anchors(source)
    aligner = FaceAligner(256)
    expected = aligner.align(source, aligner.matrix(anchors))
    psnr = frame_psnr(clip_frames[:1], expected[None])[0]
    assert psnr > 24, psnr
    assert frame_psnr(clip_frames[-1:], expected[None])[0] < psnr

    # resume: only the video whose state is missing is processed again
    state_dir = out / "work" / "state"
    states = {p.name: p.stat().st_mtime_ns for p in state_dir.glob("*.json")}
    demo2_state = next(p for p in state_dir.glob("demo2-*.json"))
    demo2_state.unlink()
    summary2 = P.prepare_dataset(str(raw_folder), str(out), cfg, num_workers=1)
    after = {p.name: p.stat().st_mtime_ns for p in state_dir.glob("*.json")}
    changed = {name for name in after if after[name] != states.get(name)}
    assert changed == {demo2_state.name}
    assert summary2.clips == 4 and len(datasets.load_from_disk(str(out / "dataset"))) == 4

    # other settings in the same output folder are refused
    with pytest.raises(LatentSyncInputError, match="other settings"):
        P.prepare_dataset(str(raw_folder), str(out), P.PrepareConfig(resolution=512), num_workers=1)


# ---------------------------------------------------------------------------------------------------- on Ray


def _states(out) -> dict[str, dict]:
    """The per-video state files of a run, without the processing time and the error text (they differ by run)."""
    states = {}
    for path in sorted((out / "work" / "state").glob("*.json")):
        state = json.loads(path.read_text())
        state.pop("seconds_processing", None)
        state.pop("error", None)
        states[path.name] = state
    return states


@pytest.fixture(scope="module")
def ray_two_cpus():
    """Ray started on this machine with 2 CPUs for the module's tests (stopped after them)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (the ray extra: pip install 'latentsync[ray]')")
    # the workers import this module to unpickle the fake models the tests pass
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}})
    yield ray
    ray.shutdown()


class BrokenSync(FakeSync):
    """A sync model that breaks on every clip with an unexpected error."""

    def __call__(self, faces, audio, start):
        raise RuntimeError("the sync model broke")


class FullDiskSync(FakeSync):
    """A sync model whose every clip meets a full disk (as a stage that writes a file would)."""

    def __call__(self, faces, audio, start):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/no/room/left/clip.wav")


def test_ray_engine_gives_the_same_clips_and_metadata_as_the_local_engine(raw_folder, tiny_syncnet, local_prepared,
                                                                          ray_two_cpus, tmp_path):
    """The same four videos (two kept with two clips each, one mute, one broken) on a local Ray with 2 CPUs: the same
    state files, dataset rows (clip bytes included), summary and dropped-clip list as the local engine. Then a resumed
    Ray run whose sync model breaks: it redoes only the video whose state is missing, and that video fails (its state
    says why, as the local engine's does, so that --retry-failed redoes it), not the run. (One resumed run checks
    both: each Ray run costs tens of seconds of worker start-up here.)"""
    import datasets

    local_out, local_summary = local_prepared
    out = tmp_path / "prepared"
    summary = P.prepare_dataset(str(raw_folder), str(out), _end_to_end_config(tiny_syncnet), engine="ray")
    assert summary.clips == local_summary.clips == 4
    states = _states(out)
    assert states == _states(local_out)
    assert sorted(s["status"] for s in states.values()) == ["done", "done", "dropped", "dropped"]
    assert datasets.load_from_disk(str(out / "dataset")).to_list() == \
        datasets.load_from_disk(str(local_out / "dataset")).to_list()
    for name in ("summary.md", "dropped_clips.csv", "prepare_config.json"):
        assert (out / name).read_text() == (local_out / name).read_text(), name
    assert (out / "work" / "filters.json").read_text() == (local_out / "work" / "filters.json").read_text()

    state_dir = out / "work" / "state"
    before = {p.name: p.stat().st_mtime_ns for p in state_dir.glob("*.json")}
    demo1 = next(state_dir.glob("demo1-*.json"))  # a video whose clips reach the model stages
    demo1.unlink()
    again = P.prepare_dataset(str(raw_folder), str(out), _end_to_end_config(tiny_syncnet), engine="ray",
                              sync_checker=BrokenSync(0, 0.0))
    after = {p.name: p.stat().st_mtime_ns for p in state_dir.glob("*.json")}
    assert {name for name in after if after[name] != before.get(name)} == {demo1.name}
    others = {k: v for k, v in _states(out).items() if k != demo1.name}
    assert others == {k: v for k, v in states.items() if k != demo1.name}
    state = json.loads(demo1.read_text())
    assert state["status"] == "failed" and "RuntimeError: the sync model broke" in state["error"]
    assert state["dropped"] == {"error": {"count": 1, "seconds": 0.0}} and state["clips"] == []
    assert again.videos_failed == 3 and again.clips == 2  # mute, broken and now demo1; demo2's two clips stay
    # a full disk stops the Ray run as it stops the local one (it recorded the video as failed and went on): one
    # line naming the path, and no state for the video, which the next run redoes without --retry-failed
    demo1.unlink()
    with pytest.raises(P.PrepareStorageError, match="could not write /no/room/left/clip.wav, outside the output"):
        P.prepare_dataset(str(raw_folder), str(out), _end_to_end_config(tiny_syncnet), engine="ray",
                          sync_checker=FullDiskSync(0, 0.0))
    assert not demo1.exists()


def test_ray_engine_without_ray_installed_is_a_clear_error(raw_folder, tmp_path, monkeypatch, caplog):
    """No traceback, no output folder: one line naming the extra to install."""
    from latentsync.commands import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    monkeypatch.delitem(sys.modules, "latentsync.data.prepare.ray_engine", raising=False)  # an earlier test's
    out = tmp_path / "prepared"
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["prepare", str(raw_folder), str(out), "--engine", "ray"]) == 2
    assert "--engine ray needs Ray" in caplog.text and "pip install 'latentsync[ray]'" in caplog.text
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- nothing kept


@pytest.fixture(scope="module")
def short_raw(tmp_path_factory):
    """One 1.2 s cut of demo1 at 540 x 960 (one planned clip of 0.6-1.2 s)."""
    if not os.path.isdir(DATA):
        pytest.skip(f"shared test clips not found at {os.path.abspath(DATA)}")
    raw = tmp_path_factory.mktemp("short_raw")
    ffmpeg("-i", os.path.join(DATA, "demo1_video.mp4"), "-t", "1.2", "-vf", "scale=540:960", "-c:v", "libx264",
           "-crf", "16", "-c:a", "aac", str(raw / "demo1.mp4"))
    return raw


def test_prepare_that_keeps_no_clip_fails_and_records_why(short_raw, tmp_path):
    """All clips below the sync threshold: an error naming the confidences, no dataset, every dropped clip with its
    offset and confidence in the summary and dropped_clips.csv; a retry with other settings needs no --overwrite."""
    import csv

    out = tmp_path / "prepared"
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, min_sync_confidence=3.0, quality="sharpness")
    with pytest.raises(P.NoClipsKeptError, match=r"kept no clip from 1 videos \(dropped: low_sync_confidence 1.*"
                                                 r"confidences of the dropped clips 0.5 to 0.5.*confidence >= 3"):
        P.prepare_dataset(str(short_raw), str(out), cfg, sync_checker=FakeSync(2, 0.5))
    assert not (out / "dataset").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == 0 and len(summary["dropped_clips"]) == 1
    dropped = summary["dropped_clips"][0]
    assert (dropped["reason"], dropped["sync_offset"], dropped["sync_confidence"]) == ("low_sync_confidence", 2, 0.5)
    assert dropped["source"] == "demo1.mp4" and dropped["start"] == 0.0
    rows = list(csv.DictReader(open(out / "dropped_clips.csv")))
    assert rows[0]["sync_confidence"] == "0.5" and rows[0]["reason"] == "low_sync_confidence"
    assert summary["filters"]["sync"]["status"] == "ran" and summary["filters"]["quality"]["status"] == "ran"
    assert "sync: **ran**" in (out / "summary.md").read_text()
    # the failed run does not lock the folder: other settings run without --overwrite
    kept = P.prepare_dataset(str(short_raw), str(out), P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False,
                                                                       quality="sharpness"))
    assert kept.clips == 1 and (out / "dataset").is_dir()
    assert kept.filters["sync"]["status"] == "skipped" and "--no-sync" in kept.filters["sync"]["detail"]


def test_prepare_command_exits_non_zero_when_it_keeps_no_clip(short_raw, tiny_syncnet, tmp_path, monkeypatch, caplog):
    """Through the command line, offline (the hyperIQA weights are not cached: quality falls back to sharpness, at
    once, and the summary says why)."""
    from huggingface_hub import constants

    from latentsync.commands import main

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    out = tmp_path / "prepared"
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        code = main(["prepare", str(short_raw), str(out), "--min-seconds", "0.6", "--max-seconds", "1.2",
                     "--syncnet", tiny_syncnet, "--min-sync-confidence", "100", "--max-sync-offset", "15"])
    assert code == 2
    error = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][-1]
    assert error.startswith("kept no clip from 1 videos") and "\n" not in error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filters"]["quality"]["status"] == "fell back"
    assert "not cached and the Hub is unavailable" in summary["filters"]["quality"]["detail"]
    assert "StableSyncNet" in summary["filters"]["sync"]["detail"]
    assert summary["dropped_clips"][0]["sync_confidence"] is not None


def test_prepare_refuses_an_output_inside_its_input(tmp_path, caplog, monkeypatch):
    """The output folder may not be the input folder or inside it (a next run would read its clips as raw videos;
    it used to be accepted), nor a file; the input must be a folder. One line each, before any file is written."""
    from latentsync.commands import main
    from latentsync.data.prepare import run

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "talk.mp4").write_bytes(b"not decoded: the checks come first")
    (tmp_path / "file.mp4").write_bytes(b"x")
    monkeypatch.setattr(run, "_prepare", lambda *a, **k: pytest.fail("prepare started"))
    cases = [(raw, "is inside the input folder"), (raw / "prepared", "is inside the input folder"),
             (tmp_path / "file.mp4", "is a file: give a folder")]
    for out, message in cases:
        caplog.clear()
        assert main(["prepare", str(raw), str(out), "--no-sync"]) == 2
        assert message in caplog.text, caplog.text
    caplog.clear()
    assert main(["prepare", str(raw / "talk.mp4"), str(tmp_path / "out"), "--no-sync"]) == 2
    assert "is a file: give the folder of raw videos" in caplog.text
    assert sorted(os.listdir(raw)) == ["talk.mp4"] and not (tmp_path / "out").exists()


def test_prepare_refuses_an_output_folder_it_cannot_write(tmp_path, caplog, monkeypatch):
    """An output folder that cannot be written (read-only, or missing under a read-only folder), or whose path runs
    through a file: one line naming it, before any video is read (the run used to end in a PermissionError or
    NotADirectoryError traceback, after probing the input)."""
    from latentsync.commands import main
    from latentsync.data.prepare import run

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "talk.mp4").write_bytes(b"not decoded: the checks come first")
    (tmp_path / "a_file").write_bytes(b"x")
    monkeypatch.setattr(run, "_prepare", lambda *a, **k: pytest.fail("prepare started"))
    blocked = f"cannot create the output folder {tmp_path / 'a_file' / 'out'}: {tmp_path / 'a_file'} is a file"
    cases = [(tmp_path / "a_file" / "out", blocked)]
    if os.path.isdir("/proc"):  # not writable even by root
        cases.append(("/proc/prepared", "cannot write the output folder /proc/prepared: /proc is not writable ("))
    if os.geteuid() != 0:  # root writes a read-only folder
        (tmp_path / "read_only").mkdir(mode=0o555)
        cases.append((tmp_path / "read_only", f"{tmp_path / 'read_only'} is not writable (Permission denied)"))
    for out, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert main(["prepare", str(raw), str(out), "--no-sync"]) == 2
        assert message in caplog.text, caplog.text
    assert sorted(os.listdir(tmp_path)) == ["a_file", "raw", *(["read_only"] if os.geteuid() != 0 else [])]


def test_prepare_refuses_an_output_folder_that_holds_other_files(tmp_path, caplog, monkeypatch):
    """An existing output folder with files of its own and no earlier prepare run in it (``prepare_config.json``) is
    refused in one line before anything is written: the run used to delete its ``dataset/`` folder (replaced by the
    prepared dataset) and overwrite its ``summary.md``. A new folder, an empty one (hidden files aside) and the
    output of an earlier run are accepted."""
    from latentsync.commands import main
    from latentsync.data.prepare import run

    raw = tmp_path / "raw"
    raw.mkdir()
    project = tmp_path / "project"
    (project / "dataset").mkdir(parents=True)
    (project / "dataset" / "labels.csv").write_text("mine")
    started = []
    monkeypatch.setattr(run, "_prepare", lambda *a, **k: started.append(a[1]))
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["prepare", str(raw), str(project), "--no-sync"]) == 2
    assert f"the output folder {project} holds other files (dataset)" in caplog.text
    assert not started and (project / "dataset" / "labels.csv").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    (project / "prepare_config.json").write_text("{}")  # an earlier run's output: resumed
    for out in (tmp_path / "new", tmp_path / "empty", project):
        assert main(["prepare", str(raw), str(out), "--no-sync"]) == 0
    assert started == [str(tmp_path / "new"), str(tmp_path / "empty"), str(project)]


def test_an_input_folder_without_videos_changes_nothing_in_the_output(short_raw, tmp_path):
    """A folder without video files is one line naming what it holds, and the output is left as it was: the run used
    to create the output folder (prepare_config.json, work/) before it looked at the input, and with --overwrite and
    other settings to delete an earlier run's clips and dataset first (also before a model that could not be
    loaded)."""
    novideo = tmp_path / "novideo"
    novideo.mkdir()
    (novideo / "talk.rmvb").write_bytes(b"a video of an ending that is not read")
    with pytest.raises(LatentSyncInputError, match=r"no video files .* \(only 1 other file: .rmvb 1\)"):
        P.prepare_dataset(str(novideo), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    out = tmp_path / "prepared"
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    assert P.prepare_dataset(str(short_raw), str(out), cfg, build_dataset=False).clips == 1
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(LatentSyncInputError, match="no video files"):
        P.prepare_dataset(str(novideo), str(out), P.PrepareConfig(resolution=512), overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # other settings with --overwrite and a model that cannot be loaded: the earlier run was deleted first too, and a
    # new output folder was made
    other = dataclasses.replace(cfg, resolution=512, quality=f"hyperiqa:{tmp_path / 'no_such_folder'}")
    with pytest.raises(LatentSyncInputError, match="cannot load the quality scorer"):
        P.prepare_dataset(str(short_raw), str(out), other, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    with pytest.raises(LatentSyncInputError, match="cannot load the quality scorer"):
        P.prepare_dataset(str(short_raw), str(tmp_path / "new"), other)
    assert not (tmp_path / "new").exists()


def test_summary_counts_each_drop_in_its_own_unit():
    """The kept/dropped table says what each reason took: whole videos, planned clips, or frames (the 2 video frames
    after the end of a file's audio track are 2 frames and 0.08 s, not "0 items, 0.1 s" of a missing audio stream)."""
    from latentsync.data.prepare.config import PrepareSummary, drop_amount
    from latentsync.data.prepare.run import _no_clips_message

    summary = PrepareSummary(videos=3, videos_done=2, videos_failed=1, clips=2, clip_seconds=28.0,
                             source_seconds=30.08, dropped={
                                 "audio_ends_early": {"count": 0, "seconds": 0.08},
                                 "no_audio": {"count": 1, "seconds": 3.0},
                                 "low_quality": {"count": 2, "seconds": 10.0},
                                 "too_short": {"count": 0, "seconds": 1.2}})
    table = summary.table()
    assert ("| dropped: audio_ends_early (video frames after the end of the audio track; a few at the end of a file "
            "are common) | 2 frames | 0.08 |") in table
    assert "| dropped: no_audio (no audio stream, or one that cannot be decoded) | 1 video | 3.0 |" in table
    assert "| 2 clips | 10.0 |" in table and "| 30 frames | 1.2 |" in table
    assert drop_amount("low_quality", {"count": 1, "seconds": 5.0}) == "1 clip"
    assert "dropped: low_quality 2 clips, no_audio 1 video, too_short 30 frames, audio_ends_early 2 frames" in (
        _no_clips_message("out", summary))


def test_frames_past_the_end_of_the_audio_are_their_own_reason(tmp_path, monkeypatch):
    """A video whose audio track ends 2 frames early: those frames are dropped as ``audio_ends_early`` (frames, count
    0), the video is kept; ``no_audio`` is only for files without a usable audio stream."""
    from conftest import write_video

    from latentsync.data.prepare import process

    frames = np.full((25, 64, 64, 3), 128, np.uint8)
    audio = (np.sin(np.arange(23 * SPF) / 10) * 0.3).astype(np.float32)  # 23 frames of audio for 25 of video
    path = write_video(tmp_path / "v.mp4", frames, audio=audio)
    monkeypatch.setattr(process, "_scan", lambda p, c: (np.zeros((25, 3, 2)), []))  # a face in every frame
    monkeypatch.setattr(process, "load_audio", lambda p, rate, video_clock=False, track=0: audio)
    scan = process.scan_video(str(path), "v.mp4", P.PrepareConfig(min_seconds=0.4, max_seconds=1.0))
    assert scan.result["status"] == "done" and scan.result["dropped"] == {
        "audio_ends_early": {"count": 0, "seconds": 2 / 25}}
    assert scan.plan and scan.plan[-1][1] == 23


# ---------------------------------------------------------------------------------------------------- review fixes


def test_quality_threshold_holds_when_auto_falls_back_to_sharpness(monkeypatch):
    """``--quality auto --quality-threshold T`` offline: the sharpness scorer that replaces hyperIQA keeps score >= T
    in this process as in the workers (it kept its own 8 here while ``--workers 2`` used T, so the clips kept
    depended on the worker count and the summary named the wrong threshold)."""
    from latentsync.data import quality
    from latentsync.data.prepare import run

    monkeypatch.setattr(quality, "hub_unreachable_reason", lambda: "huggingface.co cannot be reached")
    monkeypatch.setattr(quality, "go_offline", lambda reason: None)
    monkeypatch.setattr(quality, "is_hub_cached", lambda *args, **kwargs: False)
    cfg = P.PrepareConfig(sync=False, quality_threshold=3.0)
    _, scorer, spec = run._load_models(cfg, "cpu", None, None)
    worker = run.worker_quality_scorer(cfg, "cpu", None, spec)
    assert isinstance(scorer, SharpnessScorer) and scorer.threshold == worker.threshold == 3.0
    detail = run.describe_filters(cfg, None, scorer)["quality"]
    assert detail["status"] == "fell back" and detail["detail"].startswith("sharpness: keep score >= 3 (hyperIQA")
    _, default, _ = run._load_models(P.PrepareConfig(sync=False), "cpu", None, None)
    assert default.threshold == 8.0


def _parallel_run(short_raw, tmp_path, videos):
    """A local-engine run over ``videos`` copies of one short clip: (state folder, jobs, settings, models)."""
    from latentsync.data.prepare import run

    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness")
    models = run.StageModels(None, SharpnessScorer(), quality_spec="sharpness")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    jobs = [run.VideoJob(str(short_raw / "demo1.mp4"), f"v{i}.mp4", str(tmp_path / "clips" / f"v{i}"),
                         str(state_dir / f"v{i}.json")) for i in range(videos)]
    return state_dir, jobs, cfg, models


def test_stopping_a_parallel_run_does_not_process_the_queued_videos(short_raw, tmp_path):
    """Ctrl-C / SIGTERM (here: the caller leaving the engine's loop after the first video, as an interrupt does) stops
    the local engine's workers at once: no queued video is started, the one in progress writes no state, no worker
    is left. The pool used to be shut down with ``wait=True``, which first processed every queued video (minutes on
    a real folder, with further Ctrl-C ignored); then the idle workers' normal exit took 5-10 s on a busy machine."""
    import multiprocessing
    import time

    from latentsync.data.prepare import run

    state_dir, jobs, cfg, models = _parallel_run(short_raw, tmp_path, 10)
    finished = run._run_local(jobs, cfg, "cpu", models, num_workers=2)
    _, record = next(finished)
    assert record["status"] == "done"
    t0 = time.monotonic()
    finished.close()
    assert time.monotonic() - t0 < 4  # 0.1-0.8 s here, with four busy processes on the two cores too
    assert len(list(state_dir.glob("*.json"))) <= 3  # the first video, and those that finished meanwhile
    assert not multiprocessing.active_children()


def test_stopping_a_parallel_run_while_its_workers_start(short_raw, tmp_path, capfd, terminal_sigint):
    """Ctrl-C in a terminal reaches the workers too, and in the first seconds they are still importing torch and
    MediaPipe (20-30 s on a busy machine). Each starting worker used to die with a traceback of its imports, the pool's
    manager thread with an ``InvalidStateError`` traceback, and the run waited 10 s before killing the workers."""
    import multiprocessing
    import signal
    import threading
    import time

    from latentsync.data.prepare import run

    state_dir, jobs, cfg, models = _parallel_run(short_raw, tmp_path, 6)

    def ctrl_c() -> None:  # the terminal signals the whole process group: the workers and this process
        time.sleep(0.5)
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    finished = run._run_local(jobs, cfg, "cpu", models, num_workers=2)
    threading.Thread(target=ctrl_c, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(finished)
    # was 10.5-13 s with tracebacks and "did not stop within 10 s: killed" (asserted below); 1-6 s here, and more
    # under a loaded CI machine: the limit only catches a hang
    assert time.monotonic() - t0 < 30
    assert not multiprocessing.active_children()
    assert not list(state_dir.glob("*.json"))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "did not stop" not in err


def test_prepare_command_stopped_by_a_signal_says_the_finished_videos_are_kept(tmp_path, monkeypatch, caplog):
    """Ctrl-C / SIGTERM: exit 130 / 143 with one line saying that the finished videos are kept and how to continue
    (the generic line said "nothing was written" while work/state held every finished video)."""
    import signal

    from latentsync.commands import main
    from latentsync.data.prepare import run
    from latentsync.errors import RunInterrupted

    def stopped(*args, **kwargs):
        raise RunInterrupted(signal.SIGTERM)

    (tmp_path / "raw").mkdir()  # the command checks the folders before the run starts
    monkeypatch.setattr(run, "prepare_dataset", stopped)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["prepare", str(tmp_path / "raw"), str(tmp_path / "out"), "--no-sync"]) == 143
    assert "stopped by SIGTERM: the videos finished so far are kept in" in caplog.text
    assert "run the same command again to continue" in caplog.text and "nothing was written" not in caplog.text
    monkeypatch.setattr(run, "prepare_dataset", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["prepare", str(tmp_path / "raw"), str(tmp_path / "out"), "--no-sync"]) == 130


def test_audio_track_that_starts_after_the_video_stays_in_sync(tmp_path, monkeypatch):
    """An audio track that starts 0.6 s into the file (phone and screen recordings, stream cuts): the frames are
    decoded from the file's start, so the audio must begin with 0.6 s of silence. It was decoded from its first
    sample, which put all of it 15 frames early in every clip (and --no-sync kept those clips)."""
    from conftest import write_video, write_wav

    from latentsync.data.prepare import process

    frames = np.full((50, 64, 64, 3), 128, np.uint8)
    video = write_video(tmp_path / "picture.mp4", frames)
    t = np.arange(int(1.4 * 16000)) / 16000
    wav = write_wav(tmp_path / "speech.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    late = tmp_path / "late.mp4"
    ffmpeg("-i", str(video), "-itsoffset", "0.6", "-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
           "-c:a", "aac", str(late))
    monkeypatch.setattr(process, "_scan", lambda p, c: (np.zeros((50, 3, 2)), []))  # a face in every frame
    scan = process.scan_video(str(late), "late.mp4", P.PrepareConfig(min_seconds=0.4, max_seconds=1.0))
    assert scan.result["status"] == "done"
    onset = int(np.argmax(np.abs(scan.audio) > 0.05)) / 16000
    assert abs(onset - 0.6) < 0.03, onset
    assert abs(len(scan.audio) / 16000 - 2.0) < 0.1


def test_every_video_without_a_clip_is_named_with_its_reason(tmp_path):
    """A video that gave no clip (unreadable, mute, failed, or every frame dropped) is listed by name in summary.md,
    summary.json and dropped_videos.csv with its reason in words; the summary only counted them per reason, so
    finding which files were dropped meant reading every work/state/*.json."""
    import csv

    from latentsync.data.prepare.run import _summarise

    results = {
        "a/empty.mp4": {"source": "a/empty.mp4", "status": "dropped", "frames": 0, "clips": [],
                        "dropped": {"unreadable": {"count": 1, "seconds": 0.0}},
                        "error": "video file is empty (0 bytes): raw/a/empty.mp4"},
        "mute | take 2.mp4": {"source": "mute | take 2.mp4", "status": "dropped", "frames": 0, "clips": [],
                              "dropped": {"no_audio": {"count": 1, "seconds": 3.0}}, "error": "no audio stream"},
        "odd.mp4": P.process.failed_record("odd.mp4", "Traceback (most recent call last):\n  ...\n"
                                                      "RuntimeError: the decoder broke\n"),
        "wall.mp4": {"source": "wall.mp4", "status": "done", "frames": 100, "clips": [],
                     "dropped": {"no_face": {"count": 0, "seconds": 3.6}, "too_short": {"count": 0, "seconds": 0.4}}},
        "talk.mp4": {"source": "talk.mp4", "status": "done", "frames": 50, "dropped": {},
                     "clips": [{"num_frames": 50}]},
    }
    summary = _summarise(sorted(results), results)
    rows = {row["source"]: row for row in summary.dropped_videos}
    assert sorted(rows) == ["a/empty.mp4", "mute | take 2.mp4", "odd.mp4", "wall.mp4"]
    assert rows["a/empty.mp4"]["reason"] == "unreadable" and "empty (0 bytes)" in rows["a/empty.mp4"]["detail"]
    assert rows["mute | take 2.mp4"] == {"source": "mute | take 2.mp4", "reason": "no_audio", "seconds": 3.0,
                                        "detail": "no audio stream"}
    failed = rows["odd.mp4"]
    assert failed["reason"] == "error" and "--retry-failed" in failed["detail"]
    assert failed["detail"].startswith("RuntimeError: the decoder broke (traceback in work/state/odd-")
    assert rows["wall.mp4"] == {"source": "wall.mp4", "reason": "no_face", "seconds": 4.0,
                                "detail": "no_face 90 frames, too_short 10 frames"}
    table = summary.table()
    assert "Videos that gave no clip (4; all of them in dropped_videos.csv):" in table
    assert "| mute \\| take 2.mp4 | no_audio | no audio stream |" in table
    assert "| wall.mp4 | no_face | no_face 90 frames, too_short 10 frames |" in table
    assert table.count("dropped: ") == len(summary.dropped)  # one row per reason in the kept/dropped table
    run_csv = tmp_path / "dropped_videos.csv"
    P.run._write_csv(str(run_csv), P.run.DROPPED_VIDEO_COLUMNS, summary.dropped_videos)
    assert [r["source"] for r in csv.DictReader(run_csv.read_text(encoding="utf-8").splitlines())] == sorted(rows)


def test_the_end_to_end_run_names_its_dropped_videos(local_prepared):
    """The broken and the mute file of the end-to-end run are named in summary.md and dropped_videos.csv."""
    import csv

    out, summary = local_prepared
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "| broken.mp4 | unreadable | cannot read video " in text
    assert "| mute.mp4 | no_audio | no audio stream |" in text
    rows = list(csv.DictReader((out / "dropped_videos.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["source"], r["reason"]) for r in rows] == [("broken.mp4", "unreadable"), ("mute.mp4", "no_audio")]
    assert json.loads((out / "summary.json").read_text())["dropped_videos"] == summary.dropped_videos


def test_linked_folders_are_searched_and_a_file_reached_twice_is_one_video(short_raw, tmp_path):
    """A linked sub-folder is searched (it was skipped without a word), a link loop ends, a link into the output
    folder is not followed, and a file reached under two names (a link, a hard link) is processed once, the other
    name listed as ``duplicate`` (its clips used to be in the dataset twice); files whose ending is not a video's
    are counted in the summary (they were ignored without a word)."""
    from latentsync.data.prepare.planning import scan_input

    raw, elsewhere, out = tmp_path / "raw", tmp_path / "elsewhere", tmp_path / "out"
    (raw / ".hidden").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "work").mkdir(parents=True)
    shutil.copy(short_raw / "demo1.mp4", raw / "talk.mp4")
    (elsewhere / "other.mp4").write_bytes(b"not a video")
    (out / "work" / "clip_0000.mp4").write_bytes(b"a prepared clip")
    (raw / "linked").symlink_to(elsewhere, target_is_directory=True)
    (raw / "loop").symlink_to(raw, target_is_directory=True)
    (raw / "out").symlink_to(out, target_is_directory=True)
    (raw / "talk link.mp4").symlink_to(raw / "talk.mp4")
    os.link(raw / "talk.mp4", raw / "zz hard.mp4")
    (raw / ".hidden" / "h.mp4").write_bytes(b"hidden")
    (raw / "film.rmvb").write_bytes(b"a video with an ending that is not searched")
    (raw / "notes.TXT").write_bytes(b"notes")
    (raw / "._talk.mp4").write_bytes(b"macOS metadata")
    videos, duplicates, other_files = scan_input(str(raw), exclude=[str(out)])
    assert videos == ["linked/other.mp4", "talk.mp4"]
    assert duplicates == {"talk link.mp4": "talk.mp4", "zz hard.mp4": "talk.mp4"}
    assert other_files == {".rmvb": 1, ".txt": 1}

    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    (out / "prepare_config.json").write_text(json.dumps(cfg.identity()))  # an earlier run's output
    summary = P.prepare_dataset(str(raw), str(out), cfg)
    assert summary.videos == 4 and summary.clips == 1
    assert summary.dropped["duplicate"] == {"count": 2, "seconds": 0.0}
    rows = {row["source"]: row for row in summary.dropped_videos}
    assert rows["talk link.mp4"]["detail"] == "the same file as talk.mp4, which is processed instead"
    assert rows["linked/other.mp4"]["reason"] == "unreadable"
    assert summary.other_files == {".rmvb": 1, ".txt": 1}
    assert "Not read: 2 other files of the input folder, by ending .rmvb 1, .txt 1 (a video among them is read once " \
           "renamed to one of .mp4, .mov" in (out / "summary.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in (out / "work" / "state").glob("*.json")) == sorted(
        f"{P.video_key(v)}.json" for v in videos)


def test_a_replaced_source_video_is_processed_again(short_raw, tmp_path):
    """A rerun redoes a video whose file changed since its state was made (a finished download replacing a broken
    one, a re-export under the same name); it kept the old verdict and clips of the old file."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "talk.mp4").write_bytes(b"an unfinished download")
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    with pytest.raises(P.NoClipsKeptError, match="unreadable 1 video"):
        P.prepare_dataset(str(raw), str(out), cfg)
    shutil.copy(short_raw / "demo1.mp4", raw / "talk.mp4")
    summary = P.prepare_dataset(str(raw), str(out), cfg)
    assert summary.clips == 1 and summary.videos_done == 1 and "unreadable" not in summary.dropped
    state = next((out / "work" / "state").glob("talk-*.json"))
    before = state.stat().st_mtime_ns
    assert P.prepare_dataset(str(raw), str(out), cfg).clips == 1 and state.stat().st_mtime_ns == before  # unchanged


def test_file_names_that_are_not_utf8_are_processed(short_raw, tmp_path):
    """Source videos whose names are not valid UTF-8 (an old archive's Latin-1 names): processed, the name shown
    with U+FFFD for its odd bytes in the dataset, summaries and CSV files, and resumed. The run used to end in a
    UnicodeEncodeError traceback before any video was read."""
    import csv

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    talk, broken = os.fsdecode(b"caf\xe9 take.mp4"), os.fsdecode(b"broken \xff.mp4")
    shutil.copy(short_raw / "demo1.mp4", raw / talk)
    (raw / broken).write_bytes(b"not a video")
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    summary = P.prepare_dataset(str(raw), str(out), cfg)
    assert summary.clips == 1 and P.load_prepared(str(out))["source"] == ["caf\ufffd take.mp4"]
    [row] = summary.dropped_videos
    assert row["source"] == "broken \ufffd.mp4" and row["detail"].startswith("cannot read video ")
    assert "\ufffd" in row["detail"] and "| broken \ufffd.mp4 | unreadable |" in (out / "summary.md").read_text("utf-8")
    with open(out / "dropped_videos.csv", encoding="utf-8") as fh:
        assert [r["source"] for r in csv.DictReader(fh)] == ["broken \ufffd.mp4"]
    assert P.prepare_dataset(str(raw), str(out), cfg).clips == 1  # resumed from its state


def test_a_folder_that_cannot_be_read_is_named_in_the_log(tmp_path, monkeypatch, caplog):
    """A sub-folder of the input that cannot be listed (no permission): a warning names it and says its videos are
    not read; it was skipped without a word."""
    from latentsync.data.prepare.planning import scan_input

    raw = tmp_path / "raw"
    (raw / "locked").mkdir(parents=True)
    (raw / "talk.mp4").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        assert scan_input(str(raw)).videos == ["talk.mp4"]
    assert f"cannot read the folder {raw / 'locked'} (Permission denied): its videos are not read" in caplog.text


def test_a_full_disk_stops_the_run_in_one_line_and_leaves_no_partial_dataset(short_raw, tmp_path, monkeypatch, caplog):
    """The disk fills up while the dataset is written: one line naming the output folder and the reason, exit
    status 2, no half-written dataset (nor its cache) left, the finished videos kept; it was a DatasetGenerationError
    traceback. While a video's clips are written: the run stops there (it went on failing every video, each then
    recorded as failed, and redone only with --retry-failed); the video has no state, and the next run redoes it."""
    import errno

    import datasets

    from latentsync.commands import main
    from latentsync.data.prepare import run
    from latentsync.errors import InvalidOutputError

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    shutil.copy(short_raw / "demo1.mp4", raw / "talk.mp4")
    args = ["prepare", str(raw), str(out), "--no-sync", "--min-seconds", "0.6", "--max-seconds", "1.2",
            "--quality", "sharpness", "--quality-threshold", "0"]

    def full(self, path, *a, **k):
        os.makedirs(path, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / "data-00000-of-00001.arrow"))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(args) == 2
    assert f"could not write to the output folder {out} ({out}" in caplog.text
    assert "data-00000-of-00001.arrow): No space left on device; make room" in caplog.text
    assert sorted(os.listdir(out)) == ["prepare_config.json", "work"]
    assert sorted(os.listdir(out / "work")) == ["clips", "filters.json", "state"]
    assert len(list((out / "work" / "state").glob("talk-*.json"))) == 1

    (raw / "second.mp4").write_bytes(b"not a video")
    written = "cannot write work/clips/second/second_0000.mp4: Error closing file: No space left on device"
    monkeypatch.setattr(run, "process_video", lambda *a, **k: (_ for _ in ()).throw(InvalidOutputError(written)))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(args) == 2
    assert f"could not write to the output folder {out} ({out / 'work' / 'clips'}" in caplog.text
    assert "No space left on device" in caplog.text and "failed on" not in caplog.text
    assert list((out / "work" / "state").glob("second-*.json")) == []  # not recorded as failed
    monkeypatch.undo()
    assert main(args) == 0  # room again: the video is processed (without --retry-failed), the dataset written
    assert json.loads(next((out / "work" / "state").glob("second-*.json")).read_text())["status"] == "dropped"
    assert P.load_prepared(str(out)).num_rows == 1


def test_a_full_disk_names_where_it_could_not_write(tmp_path):
    """The run's files are also written outside the output folder (each clip's sound goes to the system's temporary
    folder first): a full temporary folder was reported as a full output folder. And an error raised while another
    one was handled, with that context suppressed, is not a full disk."""
    from latentsync.data.prepare.config import storage_cause
    from latentsync.data.prepare.run import _storage_errors

    out = str(tmp_path / "out")
    full = errno.ENOSPC, os.strerror(errno.ENOSPC)
    cases = [(OSError(*full, os.path.join(out, "work", "x.mp4")), f"could not write to the output folder {out} ("),
             (OSError(*full, "/elsewhere/tmp/audio.wav"), "could not write /elsewhere/tmp/audio.wav, outside the "
                                                          "output folder: No space left on device"),
             (OSError(*full), f"(the output folder {out} or the temporary folder ")]
    for error, said in cases:
        with pytest.raises(P.PrepareStorageError) as raised, _storage_errors(out):
            raise RuntimeError("a library's own error") from error
        assert said in str(raised.value) and "run the same command again" in str(raised.value)

    def suppressed() -> None:
        try:
            raise OSError(errno.EACCES, "Permission denied", "/some/input.mp4")
        except OSError:
            raise ValueError("cannot read video file /some/input.mp4") from None

    with pytest.raises(ValueError) as raised:
        suppressed()
    assert storage_cause(raised.value) is None
    assert storage_cause(RuntimeError("wrapped")) is None


def test_source_seconds_count_the_videos_dropped_whole(tmp_path):
    """A mute video's length is in the summary's source seconds as in its ``no_audio`` seconds, so that kept and
    dropped seconds add up to the source (the header left it out: "1 source videos (0.0 s)" next to "no_audio 1
    video 2.0 s")."""
    from conftest import write_video

    from latentsync.data.prepare import process
    from latentsync.data.prepare.run import _summarise

    path = write_video(tmp_path / "mute.mp4", np.full((50, 64, 64, 3), 128, np.uint8))
    record = process.scan_video(str(path), "mute.mp4", P.PrepareConfig(min_seconds=0.4, max_seconds=1.0)).result
    assert record["status"] == "dropped" and record["dropped"] == {"no_audio": {"count": 1, "seconds": 2.0}}
    summary = _summarise(["mute.mp4"], {"mute.mp4": record})
    assert summary.source_seconds == 2.0 and "1 source videos (2.0 s at 25 fps)" in summary.table()


def test_a_video_whose_clip_files_are_gone_is_processed_again(short_raw, tmp_path):
    """work/clips deleted after a run (the dataset holds the clips too, so it looks like a copy to free): a rerun
    makes the missing clips again. It ended, after processing every new video, in a traceback from the dataset
    build (FileNotFoundError on the first missing clip)."""
    import datasets

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    shutil.copy(short_raw / "demo1.mp4", raw / "talk.mp4")
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    assert P.prepare_dataset(str(raw), str(out), cfg).clips == 1
    shutil.rmtree(out / "work" / "clips")
    assert P.prepare_dataset(str(raw), str(out), cfg).clips == 1
    assert len(datasets.load_from_disk(str(out / "dataset"))) == 1


def test_the_speech_track_of_a_video_with_several_is_cut_into_its_clips(two_track_video, tmp_path, monkeypatch):
    """A screen recording (OBS) whose first audio track is silent and whose second holds the voice: its clips carry
    the voice, in sync with their frames, and the state and the summary say which track was used. The video was
    dropped whole as ``silent_audio`` (its first track)."""
    from latentsync.data.prepare import process
    from latentsync.media import load_audio

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(two_track_video, raw / "obs.mp4")
    brows_and_nose = np.array([[50.0, 100.0], [94.0, 100.0], [72.0, 130.0]])
    monkeypatch.setattr(process, "_scan", lambda p, c: (np.repeat(brows_and_nose[None], 50, 0), []))  # a face always
    cfg = P.PrepareConfig(min_seconds=0.6, max_seconds=1.2, sync=False, quality="sharpness", quality_threshold=0.0)
    summary = P.prepare_dataset(str(raw), str(tmp_path / "out"), cfg, build_dataset=False)
    assert summary.clips == 2 and not summary.dropped
    record = {"track": 2, "tracks": 2, "levels_db": [None, summary.audio_tracks[0]["levels_db"][1]]}
    assert summary.audio_tracks == [{"source": "obs.mp4", **record}]
    state = json.loads(next((tmp_path / "out" / "work" / "state").glob("obs-*.json")).read_text())
    assert state["audio_track"] == record
    assert "| obs.mp4 | 2 of 2 | silent, " in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    speech = load_audio(os.path.join(DATA, "demo1_video.mp4"))
    for clip in state["clips"]:
        sound = load_audio(next((tmp_path / "out" / "work" / "clips").glob(f"*/{clip['file']}")))
        expected = speech[int(clip["start"] * 16000): int(clip["end"] * 16000)]
        n = min(len(sound), len(expected)) - 500  # AAC's padding at the ends
        lag = int(np.argmax(np.correlate(sound[500:n], expected[500:n], mode="full"))) - (n - 500 - 1)
        assert abs(lag) < 40 and np.corrcoef(sound[500:n], expected[500:n])[0, 1] > 0.99, (clip["file"], lag)


def test_a_ctrl_c_while_workers_are_submitted_waits_for_the_end_of_the_submits(terminal_sigint):
    """The local engine submits its videos with the stop signals held (``interrupts.signals_held``): a Ctrl-C that
    another thread receives (pytest-xdist's, a user's GUI...) used to raise KeyboardInterrupt in the middle of a
    submit, where a worker could be started but not yet known to the pool, and it outlived the stop (seen on CI)."""
    import signal
    import threading

    from latentsync.interrupts import signals_held

    reached, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
            sender.start()
            sender.join()
            for _ in range(1000):  # bytecode on which Python would run the handler
                reached.append(len(reached))
        reached.append("after the block")  # not reached: the signal is raised at the block's end
    assert reached[-1] == 999 and signal.getsignal(signal.SIGINT) is before


def test_prepare_without_datasets_is_refused_before_any_video(tmp_path, caplog, monkeypatch):
    """Without ``datasets`` (the data extra) the command and the library refuse in one line naming the install,
    before any video is processed: the run used to process every video and then fail on the import."""
    import importlib.util

    from latentsync.commands import main
    from latentsync.data.prepare import run

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "datasets" else real_find_spec(name, *a))
    monkeypatch.setattr(run, "_prepare", lambda *a, **k: pytest.fail("prepare started"))
    raw = tmp_path / "raw"
    raw.mkdir()
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["prepare", str(raw), str(tmp_path / "out"), "--no-sync"]) == 2
    assert "datasets is not installed: pip install 'latentsync[data]'" in caplog.text
    with pytest.raises(LatentSyncInputError, match="datasets is not installed"):
        run.prepare_dataset(str(raw), str(tmp_path / "out"))
    # without the dataset step, datasets is not needed
    monkeypatch.setattr(run, "_prepare", lambda *a, **k: "started")
    assert run.prepare_dataset(str(raw), str(tmp_path / "out"), build_dataset=False) == "started"
    assert not (tmp_path / "out").exists()
