"""``latentsync --video in.mp4 --audio speech.wav --output out.mp4``: lip-sync a video (or a prepared ``--avatar``);
with ``--audio -`` the speech comes from a pipe and the frames go out live ([`latentsync.commands.live`]).

Everything that can be checked is checked before the model loads (in a fraction of a second, without importing
torch): the arguments, both files (probed with ffmpeg), the output path (never an input, not an existing file unless
``--overwrite``, a writable folder), the model (a folder with a pipeline, or a Hub id that is cached or reachable),
then the device and dtype.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..devices import DTYPE_NAMES, check_device
from ..errors import LatentSyncInputError, RunInterrupted
from ..face.choice import FACE_RULES
from ..inputs import check_output_fps, check_run_inputs, warnings_given
from ..media.audio import AUTOMATIC_TRACK, AudioTrack, parse_track_number
from ..media.constants import OUTPUT_FORMATS
from ..media.video import check_hardware_codec
from ..model_source import ModelSource, check_model_source, check_model_sources, loading
from ..schedulers import SCHEDULERS
from ..tempfiles import make_missing_folders, remove_empty_folders

logger = logging.getLogger("latentsync")

DEFAULT_MODEL = "ByteDance/LatentSync-1.6"

# the pipeline's argument names in messages -> the options that set them here
OPTION_NAMES = {"num_inference_steps": "--steps", "guidance_scale": "--guidance-scale", "face_index": "--face-index",
                "deep_cache_interval": "--deep-cache", "windows_per_batch": "--windows-per-batch", "output_fps": "--fps",
                "face_box_frame": "--face-frame", "face_box": "--face", "audio mapping key": "--audio-for",
                "audio_track": "--audio-track"}


def face_choice(text: str) -> dict[str, Any]:
    """``--face``: ``largest``, ``speaking``, a track number, or a box ``x,y,w,h`` -> the pipeline's arguments."""
    text = text.strip()
    if text in FACE_RULES:
        return {"face": text}
    if text.isdigit():
        return {"face_index": int(text)}
    parts = text.split(",")
    try:
        box = [float(v) for v in parts]
    except ValueError:
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected largest, speaking, a face number or x,y,w,h; got {text!r}")
    return {"face_box": tuple(box)}


def frame_rate(text: str) -> float | str:
    """``--fps``: ``input`` (the video's own timeline) or a frame rate."""
    if text.strip() == "input":
        return "input"
    try:
        value = float(text)
        check_output_fps(value)
    except (ValueError, LatentSyncInputError):
        raise argparse.ArgumentTypeError(f"expected input or a frame rate between 1 and 240, got {text!r}") from None
    return int(value) if value.is_integer() else value


def seed(text: str) -> int:
    """``--seed``: an integer that torch's generators take (0 to 2**63 - 1)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return value


def track_number(text: str) -> int:
    """``--audio-track``: an audio track number, counted from 1."""
    try:
        return parse_track_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an audio track number from 1 (track 1 is the file's first), "
                                         f"got {text!r}") from None


def pcm_format(text: str) -> tuple[int, int]:
    """``--pcm``: ``RATE[:CHANNELS]`` of headerless 16-bit PCM -> (sample rate, channels)."""
    rate, _, channels = text.partition(":")
    try:
        value = (int(rate), int(channels or 1))
    except ValueError:
        value = (0, 0)
    if not (1000 <= value[0] <= 384000 and 1 <= value[1] <= 8):
        raise argparse.ArgumentTypeError(f"expected RATE[:CHANNELS] (e.g. 16000, 22050 or 24000:1; 1000 to 384000 "
                                         f"Hz, 1 to 8 channels), got {text!r}")
    return value


def voice(text: str) -> tuple[int, str | AudioTrack]:
    """``--audio-for``: ``FACE=FILE`` or ``FACE:TRACK=FILE`` -> (face track number, the speech file, or its audio
    track ``TRACK`` numbered from 1 as ``--audio-track``)."""
    key, sep, path = text.partition("=")
    face, colon, track = key.partition(":")
    if not sep or not face.strip().isdigit() or not path:
        raise argparse.ArgumentTypeError(f"expected FACE=FILE or FACE:TRACK=FILE (a face number from `latentsync "
                                         f"faces`, an audio track of FILE numbered from 1), got {text!r}")
    path = os.path.expanduser(path)
    if not colon:
        return int(face), path
    try:
        return int(face), AudioTrack(path, parse_track_number(track))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FACE:TRACK=FILE with an audio track number from 1 (track 1 is "
                                         f"the file's first), got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync", description="Lip-sync a talking-face video to a speech track.",
                                epilog="Exit status: 0 done, 2 bad input (one line on stderr), 130 Ctrl-C, 143 "
                                       "SIGTERM (nothing left behind).")
    # paths: ~ is the home folder also where the shell leaves it (--output=~/out.mp4), not a folder named ~
    p.add_argument("--video", default=None, type=os.path.expanduser,
                   help="input talking-face video (or a still image of a face)")
    p.add_argument("--avatar", default=None, type=os.path.expanduser,
                   help="a prepared avatar folder (`latentsync avatar VIDEO DIR`) instead of --video")
    p.add_argument("--audio", default=None, type=os.path.expanduser,
                   help="speech audio (any audio or video file); - reads it from standard input and lip-syncs live")
    p.add_argument("--output", required=True, type=os.path.expanduser,
                   help=f"output video ({', '.join(OUTPUT_FORMATS)}); its folder is created if missing; with "
                        "--audio -, an .mp4 file or - for standard output")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists (never an input)")
    add_generation_arguments(p)
    voices = p.add_argument_group("a voice per face")
    voices.add_argument("--audio-for", type=voice, action="append", default=None, metavar="FACE[:TRACK]=FILE",
                        help="lip-sync face FACE to FILE, or to its audio track TRACK (numbered from 1 as "
                             "--audio-track; default: the automatic choice); repeat for each face; replaces --audio")
    voices.add_argument("--mix-audio", default=None, type=os.path.expanduser,
                        help="sound of the output (default: --audio, or the mix of the --audio-for files)")
    live = p.add_argument_group("live (--audio -)")
    live.add_argument("--live-format", choices=["mp4", "raw"], default=None,
                      help="fragmented MP4 with the sound (default) or raw RGB24 frames")
    live.add_argument("--chunk-seconds", type=float, default=None, help="speech read per step (default 0.2 s)")
    live.add_argument("--stats", type=float, nargs="?", const=5.0, default=None, metavar="SECONDS",
                      help="log the live figures every SECONDS (default 5) while the stream runs: frames/s, window "
                           "latency percentiles, late windows, speed against real time (the final line is always "
                           "logged)")
    live.add_argument("--pcm", type=pcm_format, default=None, metavar="RATE[:CHANNELS]",
                      help="standard input is headerless signed 16-bit little-endian PCM at RATE Hz (CHANNELS: "
                           "default 1), as TTS engines' raw/pcm outputs; without it, any format with a header "
                           "(WAV, MP3, Ogg, FLAC...)")
    return p


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """The model, device, face and generation options shared by ``latentsync`` and ``latentsync batch``."""
    add_model_arguments(p)
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="audio guidance, >= 1 (1 disables; default 1.5)")
    p.add_argument("--seed", type=seed, default=1247, help="random seed (default 1247)")
    faces = p.add_argument_group("faces (see `latentsync faces VIDEO` for the face numbers)")
    faces.add_argument("--face", type=face_choice, default=None, metavar="largest|speaking|INDEX|x,y,w,h",
                       help="face to lip-sync: the largest of each shot (default), the one speaking in the video's "
                            "own soundtrack in each shot, face track INDEX, or the face in box x,y,w,h (pixels) on "
                            "frame --face-frame")
    faces.add_argument("--face-frame", type=int, default=0, help="frame (25 fps) of the --face x,y,w,h box")
    faces.add_argument("--face-index", type=int, default=None, help=argparse.SUPPRESS)  # older name of --face INDEX
    faces.add_argument("--syncnet", default=None,
                       help="StableSyncNet (folder, Hub id or stable_syncnet.pt) to find the speaking face with "
                            "(default: lip motion against loudness)")
    p.add_argument("--audio-track", type=track_number, default=None, metavar="N",
                   help="the audio track of the speech file that holds the speech, numbered from 1 as the log, "
                        "players and OBS number them (ffmpeg's 0:a:0 is track 1); it drives the lips and is the "
                        f"output's sound. Default: {AUTOMATIC_TRACK}")
    p.add_argument("--fps", type=frame_rate, default=25, metavar="25|input|N",
                   help="output frame rate: 25 (default, the model's), input (every frame of the video at its own "
                        "timestamp, variable rates kept) or any rate")
    p.add_argument("--audio-windows", choices=["official", "overlap"], default="official",
                   help="Whisper windows: independent 30 s (official) or overlapping (no glitch every 30 s)")
    p.add_argument("--verbose", action="store_true", help="debug log, and the seconds each stage took at the end")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options [`load_pipeline`] reads: the model, its LoRA adapters, the device and dtype, speed and memory."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id or local folder of a LatentSync pipeline "
                                                          f"(default {DEFAULT_MODEL})")
    p.add_argument("--lora", action="append", default=[], metavar="DIR_OR_ID[:WEIGHT]",
                   help="LoRA adapter of the U-Net to apply (folder or Hub id, optional strength; repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), default=None, help="default: fp16 on GPU, fp32 on CPU")
    fast = p.add_argument_group("speed and memory")
    fast.add_argument("--scheduler", choices=list(SCHEDULERS), default="ddim",
                      help="sampler (default ddim, as the official code; dpm++ = DPM-Solver++ multistep)")
    fast.add_argument("--deep-cache", type=int, default=0, metavar="N",
                      help="DeepCache: full U-Net pass every N steps, shallow branch in between (0 = off; try 3)")
    fast.add_argument("--compile", action="store_true",
                      help="torch.compile the U-Net step with fixed shapes (compiles once, on the first window)")
    fast.add_argument("--cuda-graphs", action="store_true", help="with --compile: replay the steps as CUDA graphs")
    fast.add_argument("--compile-regional", action="store_true",
                      help="torch.compile each repeated U-Net block instead of the whole step (fewer, smaller "
                           "graphs to compile)")
    fast.add_argument("--windows-per-batch", type=int, default=None, metavar="N",
                      help="16-frame windows per U-Net call (default: as many as fit in GPU memory; 1 on a CPU)")
    fast.add_argument("--fused-norm", action="store_true", help="launch-light frame-pooled GroupNorm")
    fast.add_argument("--channels-last", action="store_true", help="channels-last U-Net weights (GPU)")
    fast.add_argument("--gpu-warps", action="store_true", help="face alignment and paste-back as torch warps on "
                      "the device")
    fast.add_argument("--hw-decode", nargs="?", const="cuda", default=None, metavar="HWACCEL",
                      help="decode the input video on the GPU (ffmpeg hardware decoder; default cuda = NVDEC); "
                      "falls back to the CPU with a warning where it cannot start")
    fast.add_argument("--hw-encode", nargs="?", const="h264_nvenc", default=None, metavar="ENCODER",
                      help="encode the output video on the GPU (default h264_nvenc = NVENC) instead of libx264; "
                      "falls back to libx264 with a warning where it cannot start")
    fast.add_argument("--fp8", action="store_true", help="float8 linear layers (torchao; Hopper/Ada GPUs)")
    fast.add_argument("--cpu-offload", choices=["model", "sequential"], default=None,
                      help="keep weights on the CPU and move them to the GPU when used (lower GPU memory)")
    fast.add_argument("--vae-slicing", action="store_true", help="VAE-encode/decode one frame at a time")
    fast.add_argument("--xformers", action="store_true", help="xFormers attention (CUDA, pip install latentsync[xformers])")


def face_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's face-choice arguments from ``--face``/``--face-index``/``--face-frame``."""
    choice = dict(args.face or {})
    if args.face_index is not None:
        choice.setdefault("face_index", args.face_index)
    return {**choice, "face_box_frame": args.face_frame}


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline call's generation options from the parsed arguments (without the generator and the face)."""
    return {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "audio_window_mode": args.audio_windows,
        "deep_cache_interval": args.deep_cache,
        "windows_per_batch": args.windows_per_batch,
        "output_fps": args.fps,
        "audio_track": args.audio_track,
    }


def lora_source(spec: str) -> tuple[str, float]:
    """A ``--lora`` value ``DIR_OR_ID[:WEIGHT]`` as (source, weight)."""
    if re.search(r":[\d.]+$", spec):
        source, _, weight = spec.rpartition(":")
        return source, float(weight)
    return spec, 1.0


def check_model_options(args: argparse.Namespace) -> ModelSource:
    """Check ``--model``, every ``--lora``, ``--syncnet`` and the compile options before anything loads (a local path
    must exist; offline, a Hub id must be cached); returns ``--model``'s source for [`load_pipeline`]."""
    if getattr(args, "cuda_graphs", False) and getattr(args, "compile_regional", False):
        raise LatentSyncInputError("--cuda-graphs needs the whole U-Net step compiled (--compile), not "
                                   "--compile-regional")
    source = check_model_source(args.model)
    loras = getattr(args, "lora", [])
    extra = {("--lora" if len(loras) == 1 else f"--lora #{i + 1}"): lora_source(spec)[0]
             for i, spec in enumerate(loras)}
    check_model_sources({**extra, "--syncnet": getattr(args, "syncnet", None)})
    return source


def load_pipeline(args: argparse.Namespace, local_files_only: bool = False) -> Any:
    """The pipeline of ``--model`` on ``--device`` with the LoRA adapters, SyncNet and speed options asked for.

    Call it after the checks ([`check_model_options`]): it imports torch and the pipeline (seconds).
    """
    device, dtype = check_device(args.device, args.dtype)  # the first import of torch
    # deferred, as the subcommands are: the pipeline imports diffusers and transformers (seconds)
    LatentSyncPipeline = importlib.import_module("latentsync.pipeline").LatentSyncPipeline
    logger.info("loading %s on %s (%s)", args.model, device, str(dtype).replace("torch.", ""))
    pipe = LatentSyncPipeline.from_pretrained(args.model, dtype=dtype, local_files_only=local_files_only)
    names, weights = [], []
    for i, spec in enumerate(args.lora):
        source, weight = lora_source(spec)
        with loading("--lora", source):  # a folder without an adapter: one line, not a traceback
            pipe.load_lora_weights(source, adapter_name=f"lora_{i}")
        names.append(f"lora_{i}")
        weights.append(weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
    if args.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif args.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.scheduler != "ddim":
        pipe.set_scheduler(args.scheduler)
    if args.vae_slicing:
        pipe.enable_vae_slicing()
    if args.xformers:
        pipe.enable_xformers_memory_efficient_attention()
        pipe.unet.set_frame_masked_attention()  # the temporal layers keep SDPA with a frame mask (short sequences)
    if args.fused_norm:
        pipe.unet.set_fused_norm(True)
    if args.channels_last:
        pipe.enable_channels_last()
    if args.fp8:
        pipe.enable_fp8()
    if args.compile or args.cuda_graphs or args.compile_regional:
        pipe.compile_denoiser(cuda_graphs=args.cuda_graphs, regional=args.compile_regional)
    if args.gpu_warps:
        pipe.enable_warps_on_device()
    if args.hw_decode:
        pipe.enable_hardware_decode(args.hw_decode)
    if args.hw_encode:
        pipe.enable_hardware_encode(args.hw_encode)
    if args.syncnet:
        with loading("--syncnet", args.syncnet):
            pipe.load_syncnet(args.syncnet)
    return pipe


def _with_option_names(message: str, face_option: str = "--face-index") -> str:
    """``message`` with the pipeline's argument name it starts with replaced by the option that sets it here
    (``face_option``: the option the user chose the face with), also where the message repeats that name
    (``output_fps 30: ... prepared for output_fps 25``)."""
    for name, option in {**OPTION_NAMES, "face": "--face", "face_index": face_option}.items():
        if message.startswith((name + " ", name + "=", name + ":")):
            rest = message[len(name):]
            if "_" in name:  # an identifier, never a word of the sentence
                rest = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", option, rest)
            return option + rest
    return message


@contextmanager
def in_option_words(args: argparse.Namespace) -> Iterator[None]:
    """An input error raised inside the block (a check, the pipeline), raised again in the options' words
    ([`_with_option_names`]: ``--fps 30`` for ``output_fps 30``; a face named with ``--face-index`` or ``--face``
    as the user chose it)."""
    face_option = "--face-index" if args.face_index is not None else "--face"
    try:
        yield
    except LatentSyncInputError as exc:
        raise type(exc)(_with_option_names(str(exc), face_option)) from None


def run(argv: list[str]) -> int:
    """Check everything, load the pipeline with the speed options asked for, and lip-sync one video."""
    p = parser()
    args = p.parse_args(argv)
    if (args.audio is None) == (args.audio_for is None):
        p.error("give the speech with --audio, or one --audio-for FACE=FILE per face")
    if (args.video is None) == (args.avatar is None):
        p.error("give the face with --video or with --avatar (one of them)")
    for option, name, kind in (("--hw-decode", args.hw_decode, "decoder"), ("--hw-encode", args.hw_encode, "encoder")):
        try:
            if name:
                check_hardware_codec(name, kind)
        except ValueError as exc:
            p.error(f"{option}: {exc}")
    if args.audio_for and args.audio_track is not None:
        p.error("--audio-track: with --audio-for, give each voice's track as --audio-for FACE:TRACK=FILE")
    if args.audio == "-" and args.audio_track is not None:
        p.error("--audio-track: a pipe (--audio -) carries one audio stream; to lip-sync a track of a file, give the "
                "file as --audio")
    if args.audio == "-":
        args.live_format = args.live_format or "mp4"
        args.chunk_seconds = 0.2 if args.chunk_seconds is None else args.chunk_seconds
        # deferred, as the pipeline: a live run imports torch and the live session
        return importlib.import_module("latentsync.commands.live").run_live(args)
    live_only = [name for name, value in (("--live-format", args.live_format), ("--chunk-seconds", args.chunk_seconds),
                                          ("--pcm", args.pcm), ("--stats", args.stats),
                                          ("--output -", "-" if args.output == "-" else None)) if value is not None]
    if live_only:
        p.error(f"{', '.join(live_only)}: only for live runs, which read the speech from standard input (--audio -)")
    if args.verbose:
        logging.getLogger("latentsync").setLevel(logging.DEBUG)
    choice = face_arguments(args)
    audio = dict(args.audio_for) if args.audio_for else args.audio
    if args.audio_for and len(audio) != len(args.audio_for):
        raise LatentSyncInputError("--audio-for names the same face twice")
    stages: dict[str, float] = {}
    start = time.perf_counter()
    with in_option_words(args):
        checked = check_run_inputs(args.video, audio, args.output, overwrite=args.overwrite,
                                   create_output_folder=True, mix_audio=args.mix_audio, num_inference_steps=args.steps,
                                   guidance_scale=args.guidance_scale, deep_cache_interval=args.deep_cache,
                                   windows_per_batch=args.windows_per_batch, output_fps=args.fps, avatar=args.avatar,
                                   audio_track=args.audio_track, **choice)
    source = check_model_options(args)
    stages["checks"] = time.perf_counter() - start

    import torch  # deferred: seconds to import; the checks above report bad input before

    start = time.perf_counter()
    pipe = load_pipeline(args, source.local_files_only)
    stages["model_load"] = time.perf_counter() - start
    generator = torch.Generator("cpu").manual_seed(args.seed)
    created = make_missing_folders(os.path.dirname(os.path.abspath(args.output)))  # e.g. outputs/ on a fresh clone
    try:
        with in_option_words(args), warnings_given(checked.warnings):  # warnings: logged above, before loading
            out = pipe(
                video=args.video,
                avatar=args.avatar,
                audio=audio,
                output_path=args.output,
                generator=generator,
                mix_audio=args.mix_audio,
                overwrite=args.overwrite,
                **generation_kwargs(args),
                **choice,
            )
    except RunInterrupted as exc:
        remove_empty_folders(created)
        logger.error("stopped by %s: no output was written, temporary files were removed", exc.signal_name)
        return exc.exit_code
    except BaseException:
        remove_empty_folders(created)
        raise
    logger.info("wrote %s (%d frames at %g fps, %d without a face)", out.path, out.num_frames, out.fps,
                out.frames_without_face)
    for shot in out.faces or []:
        scores = ", ".join(f"face {k}: {'-' if v is None else f'{v:.3f}'}" for k, v in shot.scores.items())
        logger.info("shot %d (frames %d-%d): %s (%s)%s", shot.shot, shot.start, shot.end - 1,
                    ", ".join(f"face {k}" for k in shot.tracks) or "no face", shot.rule,
                    f"; scores {scores}" if scores else "")
    if args.verbose:
        timings = {**stages, **out.timings}
        logger.info("seconds per stage: %s", ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    return 0
