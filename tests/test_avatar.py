"""Prepared avatars: saved once (safetensors + JSON), then lip-synced without face analysis or the VAE encoder,
giving exactly the frames of the call on the video."""

from __future__ import annotations

import json
import os
import re
import types

import numpy as np
import pytest
import torch

from conftest import ffmpeg
from latentsync import LatentSyncInputError
from latentsync.avatar import Avatar
from latentsync.testing import build_tiny_pipeline

KW = dict(num_inference_steps=1, guidance_scale=1.5)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, example_speech):
    out = tmp_path_factory.mktemp("avatar") / "speech.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", "1.6", os.fspath(out))
    return out


@pytest.fixture(scope="module")
def short_face(tmp_path_factory, example_face):
    """1 s of the example face at 30 fps: the speech (1.6 s) is longer, so the output loops."""
    out = tmp_path_factory.mktemp("avatar") / "face30.mp4"
    ffmpeg("-i", os.fspath(example_face), "-t", "1", "-vf", "fps=30", "-c:v", "libx264", "-crf", "14",
           os.fspath(out))
    return out


def _no_analysis(monkeypatch, pipe):
    """Make face analysis and the VAE encoder fail: an avatar call must use neither."""
    def refuse(*args, **kwargs):
        raise AssertionError("the avatar call ran face analysis or the VAE encoder")

    monkeypatch.setattr("latentsync.streaming.FaceTracker", refuse)
    monkeypatch.setattr(pipe.vae, "encode", refuse)


@pytest.mark.parametrize("output_fps", [25, "input"])
def test_avatar_gives_the_frames_of_the_full_call(tiny_pipe_64, short_face, speech, tmp_path, monkeypatch,
                                                  output_fps):
    pipe = tiny_pipe_64
    folder = tmp_path / "avatar"
    prepared = pipe.prepare_avatar(short_face, folder, output_fps=output_fps)
    assert {"avatar.json", "avatar.safetensors", "video.mp4"} <= set(os.listdir(folder))
    config = json.loads((folder / "avatar.json").read_text())
    n = 30 if output_fps == "input" else 25
    assert config["num_frames"] == n and len(config["matrices"]) == n and config["fps"] == output_fps
    assert prepared.crops.shape == (n, 64, 64, 3) and prepared.crops.dtype == np.uint8
    assert tuple(prepared.masked_posteriors.shape) == (n, 8, 8, 8)

    full = pipe(short_face, speech, output_fps=output_fps, generator=torch.Generator().manual_seed(7), **KW)
    _no_analysis(monkeypatch, pipe)
    from_avatar = pipe(avatar=folder, audio=speech, generator=torch.Generator().manual_seed(7), **KW)
    assert from_avatar.num_frames == full.num_frames > n  # looped (with the latent cache of looping videos)
    assert np.array_equal(from_avatar.frames, full.frames)
    if output_fps == "input":
        assert np.array_equal(from_avatar.timestamps, full.timestamps)


def test_avatar_of_frames_in_memory_round_trip(tiny_pipe_64, short_face, speech, tmp_path):
    from latentsync.media import iter_frames

    frames = np.stack(list(iter_frames(short_face, 25)))[:20]
    folder = tmp_path / "memory-avatar"
    tiny_pipe_64.prepare_avatar(frames, folder)
    loaded = Avatar.load(folder)
    assert loaded.video_path is None and np.array_equal(loaded.frames, frames)
    full = tiny_pipe_64(frames, speech, generator=torch.Generator().manual_seed(1), cache_latents=False, **KW)
    again = tiny_pipe_64(avatar=loaded, audio=speech, generator=torch.Generator().manual_seed(1),
                         cache_latents=False, **KW)
    assert np.array_equal(full.frames, again.frames)

    # replacing an avatar of a video with one of frames, and back: no file of the earlier one stays behind
    video_folder = tmp_path / "replaced"
    tiny_pipe_64.prepare_avatar(short_face, video_folder)
    assert sorted(os.listdir(video_folder)) == ["avatar.json", "avatar.safetensors", "video.mp4"]
    tiny_pipe_64.prepare_avatar(frames, video_folder)
    assert sorted(os.listdir(video_folder)) == ["avatar.json", "avatar.safetensors", "frames.safetensors"]
    tiny_pipe_64.prepare_avatar(short_face, video_folder)
    assert sorted(os.listdir(video_folder)) == ["avatar.json", "avatar.safetensors", "video.mp4"]


def test_avatar_errors(tiny_pipe_64, short_face, speech, tmp_path):
    folder = tmp_path / "avatar"
    tiny_pipe_64.prepare_avatar(short_face, folder)
    with pytest.raises(LatentSyncInputError, match="either a video or a prepared avatar"):
        tiny_pipe_64(short_face, speech, avatar=folder)
    with pytest.raises(LatentSyncInputError, match="not a prepared avatar"):
        tiny_pipe_64(avatar=tmp_path, audio=speech)
    with pytest.raises(LatentSyncInputError, match="chosen when it was prepared"):
        tiny_pipe_64(avatar=folder, audio=speech, face_index=1)
    other = build_tiny_pipeline(resolution=64, seed=1)
    with pytest.raises(LatentSyncInputError, match="another VAE"):
        other(avatar=folder, audio=speech)


def test_avatar_is_never_written_over_other_files(tiny_pipe_64, short_face, speech, tmp_path, monkeypatch):
    """prepare_avatar writes only into a new or empty folder, or over an earlier avatar (with overwrite): a folder of
    the user's own files (here a ``video.mp4``, the name of the avatar's copy) is refused before any work, and a
    failed write leaves no ``avatar.json`` (the folder is then not an avatar) and no partial files."""
    from latentsync.errors import InvalidOutputError

    user = tmp_path / "videos"
    user.mkdir()
    (user / "video.mp4").write_bytes(b"the user's own video")
    with pytest.raises(LatentSyncInputError, match="folder with other files, not an avatar"):
        tiny_pipe_64.prepare_avatar(short_face, user)
    assert (user / "video.mp4").read_bytes() == b"the user's own video" and sorted(os.listdir(user)) == ["video.mp4"]
    with pytest.raises(LatentSyncInputError, match="is a file"):
        tiny_pipe_64.prepare_avatar(short_face, user / "video.mp4")

    folder = tmp_path / "avatar"
    tiny_pipe_64.prepare_avatar(short_face, folder)
    with pytest.raises(LatentSyncInputError, match="already holds an avatar"):
        tiny_pipe_64.prepare_avatar(short_face, folder, overwrite=False)
    before = (folder / "video.mp4").read_bytes()
    with pytest.raises(InvalidOutputError, match="is the input file"):  # the avatar's files are the call's inputs
        tiny_pipe_64(avatar=folder, audio=speech, output_path=folder / "video.mp4", **KW)
    assert (folder / "video.mp4").read_bytes() == before

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        tiny_pipe_64.prepare_avatar(short_face, folder)  # replaces the earlier avatar, and fails half way
    assert not (folder / "avatar.json").exists()
    assert not [n for n in os.listdir(folder) if "partial" in n]
    with pytest.raises(LatentSyncInputError, match="incomplete .*a run writing it stopped; .*prepare it again"):
        Avatar.load(folder)
    monkeypatch.undo()
    tiny_pipe_64.prepare_avatar(short_face, folder, overwrite=False)  # a stopped write may be redone
    assert Avatar.load(folder).num_frames == 25


def test_damaged_avatar_is_one_line(tiny_pipe_64, short_face, tmp_path):
    """A truncated avatar.safetensors, an avatar.json without its entries and a JSON whose frames disagree with the
    tensors are each one line naming the avatar and the problem (they were a safetensors traceback, a KeyError, and
    for the last a run that silently used 10 of the 25 frames)."""
    import shutil

    from latentsync.avatar import avatar_files

    good = tmp_path / "good"
    tiny_pipe_64.prepare_avatar(short_face, good)

    def damaged(name, change):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return folder

    def truncate(folder):
        data = (folder / "avatar.safetensors").read_bytes()
        (folder / "avatar.safetensors").write_bytes(data[:1000])

    def edit_json(**entries):
        def change(folder):
            config = json.loads((folder / "avatar.json").read_text())
            config.update(entries)
            for key in [k for k, v in entries.items() if v is ...]:
                del config[key]
            (folder / "avatar.json").write_text(json.dumps(config))
        return change

    config = json.loads((good / "avatar.json").read_text())
    cases = [
        (damaged("truncated", truncate), "unreadable avatar.safetensors .*prepare it again"),
        (damaged("no-video-entry", edit_json(video=...)), "damaged avatar.json"),
        (damaged("no-matrices", edit_json(matrices=...)), r"damaged avatar.json \(no 'matrices'\)"),
        (damaged("fewer-matrices", edit_json(matrices=config["matrices"][:10])),
         "inconsistent .*10 alignment matrices for 25 frames"),
        (damaged("one-face-less", edit_json(matrices=[None] + config["matrices"][1:])),
         "inconsistent .*crops of shape \\(25, 64, 64, 3\\) for 24 faces"),
    ]
    for folder, message in cases:
        with pytest.raises(LatentSyncInputError, match=message):
            Avatar.load(folder)
    with pytest.raises(LatentSyncInputError, match="damaged avatar.json"):
        avatar_files(tmp_path / "no-video-entry")
    assert Avatar.load(good).num_frames == 25


def test_avatar_folder_on_a_read_only_file_system(tiny_pipe_64, short_face, tmp_path, monkeypatch):
    """Replacing an avatar where nothing can be written is refused by the check before any work (it was an
    OSError traceback from removing avatar.json, after the model loaded and the faces were analysed); a new folder
    under a read-only parent likewise. os.access says yes to root, so the check creates a file."""
    import tempfile

    from latentsync.avatar import check_avatar_destination

    folder = tmp_path / "avatar"
    tiny_pipe_64.prepare_avatar(short_face, folder)
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(os.fspath(tmp_path)):
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    for target in (folder, tmp_path / "new"):
        with pytest.raises(LatentSyncInputError, match="not writable .*Read-only file system"):
            check_avatar_destination(target, overwrite=True)
    with pytest.raises(LatentSyncInputError, match="not writable .*Read-only file system"):
        tiny_pipe_64.prepare_avatar(short_face, folder)
    assert Avatar.load(folder).num_frames == 25  # the earlier avatar is untouched


# ---------------------------------------------------------------------------------------------------- concurrent runs
def _synthetic(value: int, video: bool = False) -> Avatar:
    """A small avatar whose every number is ``value`` (frames in memory, or of a video file with ``video``)."""
    return Avatar(resolution=8, fps=25, num_frames=4, frame_shape=(8, 8, 3), matrices=[np.eye(2, 3)] * 4,
                  crops=np.full((4, 8, 8, 3), value, np.uint8),
                  masked_posteriors=torch.full((4, 8, 1, 1), float(value)),
                  reference_posteriors=torch.full((4, 8, 1, 1), float(value)),
                  frames=None if video else np.full((4, 8, 8, 3), value, np.uint8), label=f"avatar {value}")


def _values(avatar: Avatar) -> set[int]:
    """Every number the avatar holds (one for an avatar of [`_synthetic`], more for a mix of two)."""
    parts = [avatar.crops, avatar.masked_posteriors.numpy(), avatar.reference_posteriors.numpy()]
    if avatar.frames is not None:
        parts.append(avatar.frames)
    return {int(v) for part in parts for v in np.unique(part)} | {int(avatar.label.split()[-1])}


WRITER = """
import sys
import safetensors.torch
from test_avatar import _synthetic

real, paused_once = safetensors.torch.save_file, []

def paused(*args, **kwargs):  # the writer stops half way through (at its first file), holding the folder
    if not paused_once:
        paused_once.append(1)
        print("writing", flush=True)
        sys.stdin.readline()
    return real(*args, **kwargs)

safetensors.torch.save_file = paused
_synthetic(2).save(sys.argv[1])
print("done", flush=True)
"""


def test_two_writers_and_a_reader_at_once(tmp_path, example_face, tiny_model_dir_64, caplog, monkeypatch):
    """A second writer into an avatar folder that another process is writing is refused at once with one line (both
    wrote their files into it, interleaved), ``latentsync avatar --overwrite`` before its model loads; a reader
    meanwhile is told the avatar is being written (not "not a prepared avatar"), and after the write reads the new
    avatar whole."""
    import subprocess
    import sys
    from pathlib import Path

    from latentsync.avatar import check_avatar_destination
    from latentsync.commands import main

    folder = tmp_path / "avatar"
    _synthetic(1).save(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
        busy = "is being written by another run right now: wait for it to end"
        with pytest.raises(LatentSyncInputError, match=busy):
            _synthetic(3).save(folder)
        with pytest.raises(LatentSyncInputError, match=busy):
            check_avatar_destination(folder)
        with pytest.raises(LatentSyncInputError, match="incomplete .*another run is writing it right now"):
            Avatar.load(folder)

        def refuse(*args, **kwargs):
            raise AssertionError("the model was loaded while another run wrote the avatar")

        monkeypatch.setattr("latentsync.commands.avatar.load_pipeline", refuse)
        caplog.clear()
        assert main(["avatar", str(example_face), str(folder), "--overwrite", "--model", str(tiny_model_dir_64),
                     "--device", "cpu"]) == 2
        assert busy in caplog.text
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.stdin.close()
        writer.wait(60)
    assert writer.returncode == 0
    assert _values(Avatar.load(folder)) == {2}  # the first writer's avatar, whole
    assert sorted(os.listdir(folder)) == ["avatar.json", "avatar.safetensors", "frames.safetensors"]

    # threads of one process likewise (the lock of a process is not shared by its threads)
    import threading

    from latentsync.avatar import avatar_writer

    held, release = threading.Event(), threading.Event()

    def hold():
        with avatar_writer(folder):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(LatentSyncInputError, match=busy):
            _synthetic(3).save(folder)
    finally:
        release.set()
        thread.join()
    _synthetic(3).save(folder)
    assert _values(Avatar.load(folder)) == {3}


def test_a_reader_never_sees_a_mix_of_two_avatars(tmp_path, monkeypatch):
    """Another run replaces the avatar while a reader reads it (here, exactly between its JSON and its tensors):
    the reader returns the new avatar whole (it returned the old JSON with the new faces and frames, of the same
    shapes, so nothing noticed)."""
    import safetensors.torch

    folder = tmp_path / "avatar"
    _synthetic(1).save(folder)
    real, calls = safetensors.torch.load_file, []

    def rewritten_meanwhile(file, *args, **kwargs):
        calls.append(os.path.basename(file))
        if len(calls) == 1:
            _synthetic(2).save(folder)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", rewritten_meanwhile)
    assert _values(Avatar.load(folder)) == {2}


def test_the_video_of_a_loaded_avatar_replaced_meanwhile(tmp_path):
    """An avatar is loaded, then prepared again from another video while the run still uses it: decoding its video
    is one line saying so (it decoded the new video and pasted the old avatar's faces onto it)."""
    red, blue = tmp_path / "red.mp4", tmp_path / "blue.mp4"
    for path, colour in ((red, "red"), (blue, "blue")):
        ffmpeg("-f", "lavfi", "-i", f"color={colour}:size=16x16:rate=25:duration=0.16", "-pix_fmt", "yuv420p",
               os.fspath(path))
    folder = tmp_path / "avatar"
    prepared = _synthetic(1, video=True)
    prepared.save(folder, red)
    loaded = Avatar.load(folder)
    assert len(list(loaded.frame_source())) == 4  # read as often as needed while the avatar stays
    assert len(list(prepared.frame_source())) == 4
    _synthetic(2, video=True).save(folder, blue)
    for avatar in (loaded, prepared):  # loaded, or kept from prepare_avatar
        with pytest.raises(LatentSyncInputError, match="was prepared again while this run used it"):
            list(avatar.frame_source())
    assert len(list(Avatar.load(folder).frame_source())) == 4


def test_avatar_arguments_are_refused_before_any_work(tiny_pipe_64, short_face, speech, tmp_path, monkeypatch):
    """A call on an avatar with an ``output_fps`` other than the avatar's, or a face choice, is refused by the early
    input check (``check_run_inputs``, so also ``pipe.check_inputs`` and the app), before the avatar's tensors are
    read: the pipeline refused the ``output_fps`` only after loading the avatar, and ``check_run_inputs`` not at
    all."""
    from latentsync.inputs import check_run_inputs

    folder = tmp_path / "avatar"
    tiny_pipe_64.prepare_avatar(short_face, folder)

    def refuse(*args, **kwargs):
        raise AssertionError("the avatar was loaded before its arguments were checked")

    monkeypatch.setattr(Avatar, "load", refuse)
    fps = r"output_fps 30: the avatar .*avatar was prepared for output_fps 25; prepare it again with output_fps 30"
    with pytest.raises(LatentSyncInputError, match=fps):
        check_run_inputs(None, speech, avatar=folder, output_fps=30)
    with pytest.raises(LatentSyncInputError, match=fps):
        tiny_pipe_64(avatar=folder, audio=speech, output_fps=30, **KW)
    for face in ({"face_index": 1}, {"face": "speaking"}, {"face_box": (1, 2, 30, 30)}, {"face_box_frame": 3}):
        name = next(iter(face))
        with pytest.raises(LatentSyncInputError, match=f"^{name}: the face of an avatar was chosen when it was"):
            check_run_inputs(None, speech, avatar=folder, **face)
    with pytest.raises(LatentSyncInputError, match="^audio mapping key: an avatar has one face"):
        check_run_inputs(None, {0: speech}, avatar=folder)


def test_avatar_run_reads_the_avatar_json_once_before_loading(tiny_pipe_64, short_face, speech, tmp_path,
                                                              monkeypatch, caplog):
    """``latentsync --avatar DIR ...`` reads the avatar's JSON once in its checks (it read it twice: once for the
    avatar's options, once for its files), and still refuses ``--fps`` in the option's words."""
    from latentsync.commands import main

    folder = tmp_path / "avatar"
    tiny_pipe_64.prepare_avatar(short_face, folder)
    reads = []
    load = json.load

    def counted(fh, *args, **kwargs):
        reads.append(os.path.basename(getattr(fh, "name", "")))
        return load(fh, *args, **kwargs)

    class Loaded(Exception):
        pass

    def stop(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(json, "load", counted)
    monkeypatch.setattr("latentsync.commands.run.load_pipeline", stop)
    monkeypatch.setattr("latentsync.commands.run.check_model_options",
                        lambda args: types.SimpleNamespace(local_files_only=True))
    with pytest.raises(Loaded):
        main(["--avatar", str(folder), "--audio", str(speech), "--output", str(tmp_path / "out.mp4")])
    assert reads.count("avatar.json") == 1
    assert main(["--avatar", str(folder), "--audio", str(speech), "--output", str(tmp_path / "out.mp4"),
                 "--fps", "30"]) == 2
    assert re.search(r"--fps 30: the avatar .* was prepared for --fps 25; prepare it again with --fps 30, or "
                     r"leave --fps out", caplog.text), caplog.text
    assert main(["--avatar", str(folder), "--audio-for", f"0={speech}", "--output", str(tmp_path / "out.mp4")]) == 2
    assert "--audio-for: an avatar has one face; give one audio" in caplog.text  # was refused after loading
