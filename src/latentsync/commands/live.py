"""``latentsync --avatar DIR --audio - --output -``: lip-sync speech read from a pipe as it arrives, writing each
window of frames as soon as it is made (fragmented MP4 with the sound, or raw RGB24 frames)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import closing

import numpy as np
import torch

from ..avatar import avatar_config
from ..errors import InvalidVideoError, LatentSyncInputError, RunInterrupted
from ..face.choice import check_face_arguments
from ..inputs import check_arguments, check_avatar_arguments
from ..live import LiveStatsLog, LiveStream
from ..media.files import check_input_file
from ..media.pipes import LiveVideoSink, at_constant_rate, read_audio_chunks
from ..media.video import check_output_path
from ..tempfiles import make_work_dir, remove_work_dir
from .run import check_model_options, face_arguments, in_option_words, load_pipeline

logger = logging.getLogger("latentsync")


def run_live(args: argparse.Namespace) -> int:
    """The live run of ``latentsync`` (``--audio -``); a ``--video`` is first prepared as an avatar in a temporary
    folder."""
    if args.audio_for:
        raise LatentSyncInputError("--audio - takes one voice: --audio-for does not apply")
    if args.output != "-" and not args.output.lower().endswith(".mp4"):
        raise LatentSyncInputError(f"a live output is fragmented MP4: write it to an .mp4 file or to - (standard "
                                   f"output), not {args.output}")
    if args.chunk_seconds <= 0:
        raise LatentSyncInputError(f"--chunk-seconds must be > 0, got {args.chunk_seconds}")
    if args.stats is not None and not args.stats > 0:
        raise LatentSyncInputError(f"--stats must be > 0 seconds, got {args.stats:g}")
    if sys.stdin is None or sys.stdin.isatty():  # nothing piped in: the run would wait for speech after loading
        raise LatentSyncInputError("--audio - reads the speech from standard input, which is a terminal here: pipe "
                                   "the audio in (e.g. some-tts | latentsync ... or < speech.wav)")
    # options of a run on a speech file that a live run has no use for: they were silently ignored
    unused = [name for name, used in (("--mix-audio", args.mix_audio is not None),
                                      ("--audio-windows overlap", args.audio_windows != "official"),
                                      ("--deep-cache", bool(args.deep_cache)),
                                      ("--windows-per-batch", args.windows_per_batch is not None)) if used]
    if unused:
        raise LatentSyncInputError(f"{', '.join(unused)}: not for live runs (--audio -), which make one window at a "
                                   "time, as its speech arrives, with the official audio windows")
    if args.verbose:
        logging.getLogger("latentsync").setLevel(logging.DEBUG)
    check_arguments(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    if args.video is not None:
        inputs = [check_input_file(args.video, InvalidVideoError, "video")]
        with in_option_words(args):  # the face choice, as the run on a speech file checks it before loading
            check_face_arguments(**face_arguments(args))
    else:
        config, inputs = avatar_config(args.avatar)
        with in_option_words(args):  # what the avatar fixed when it was prepared: its face and timeline
            check_avatar_arguments(args.avatar, config.get("fps"), output_fps=args.fps, **face_arguments(args))
    if args.output != "-":  # the output is written as it is made: never over an input, nor over a file unasked
        check_output_path(args.output, inputs, overwrite=args.overwrite, create_folder=True)
    source = check_model_options(args)
    pipe = load_pipeline(args, source.local_files_only)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    # the avatar of a --video in a work folder of this process: the next run removes it when this one was killed
    work = make_work_dir("avatar") if args.avatar is None else None
    session = None
    try:
        avatar = args.avatar
        if avatar is None:
            with in_option_words(args):
                avatar = pipe.prepare_avatar(args.video, work, output_fps=args.fps, **face_arguments(args))
        session = pipe.live_session(avatar, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                    generator=generator)
        timestamps = session.avatar.timestamps
        # pipes carry no timestamps: an avatar on its own (variable) timeline is written at its typical rate, each
        # frame repeated or dropped by its time (written one after the other, a variable rate drifted from the sound)
        timed = timestamps is not None and len(timestamps) >= 2
        fps = 1.0 / float(np.median(np.diff(timestamps))) if timed else session.fps
        if args.output != "-":
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        frames_in = session.avatar.frame_source()  # the video's pixel shape and whether it names its colours
        sink = LiveVideoSink(args.output, fps, args.live_format, encoder=args.hw_encode,
                             sample_aspect=frames_in.sample_aspect, tag_colors=frames_in.colors_known)

        def speech() -> Iterator[np.ndarray]:
            # closed with this generator: the reader's ffmpeg and its thread on standard input end with the run
            with closing(read_audio_chunks(sys.stdin.buffer, args.chunk_seconds, pcm=args.pcm)) as audio:
                for chunk in audio:
                    sink.write_audio(chunk)
                    yield chunk

        target = "standard output" if args.output == "-" else args.output
        chunks = speech()
        stream = LiveStream(session, chunks)
        report = LiveStatsLog(session.stats, args.stats) if args.stats is not None else None
        closed = discard = False
        try:
            images = at_constant_rate(((f.time, f.image) for f in stream), fps) if timed else (f.image for f in stream)
            for image in images:
                sink.write(image)
                if report is not None:
                    report()
            closed = True
            sink.close()
        except RunInterrupted as exc:
            if not sink.frames_written:
                discard = True  # a file the writer began (the first frame interrupted) goes below
                raise  # nothing was written: the usual message
            # a live output is written as it is made: what was sent stays (fragmented MP4 plays without an end)
            if closed:  # while the writer completed the output: its ffmpeg was stopped, its last fragment lost
                logger.error("stopped by %s while the output was being completed: %s holds what ffmpeg had written "
                             "of the %d frames made", exc.signal_name, target, sink.frames_written)
            else:
                logger.error("stopped by %s: %s holds the %d frames made until then", exc.signal_name, target,
                             sink.frames_written)
            logger.info("live: %s", session.stats.summary())
            return exc.exit_code
        finally:
            # however the stream ends (an error of the audio pipe or of the model included): the session, the
            # speech reader's ffmpeg and the writer's ffmpeg and thread are closed, not left to the garbage collector
            stream.close()
            chunks.close()
            if not closed:
                try:
                    sink.close()
                # an ffmpeg that failed, or Ctrl-C while it completes the output after an error (close stopped it):
                # the run's own error is the one to tell
                except (InvalidVideoError, OSError, RunInterrupted):
                    pass
            if discard and sink.started and args.output != "-" and os.path.exists(args.output):
                os.remove(args.output)
    finally:
        if session is not None:  # its frame file, also when the run failed before its stream began
            session.close()
        if work is not None:
            remove_work_dir(work)
    logger.info("live: %d frames at %g fps to %s", sink.frames_written, fps, target)
    logger.info("live: %s", session.stats.summary())
    return 0
