"""Video reading and writing with the ffmpeg binary bundled in imageio-ffmpeg.

Frames are decoded as a stream of RGB uint8 arrays resampled to a fixed frame rate by ffmpeg's ``fps`` filter, so
inputs of any frame rate (including variable) map onto the model's 25 fps timeline; rotation metadata is applied
(frames come out upright). Output is written to a hidden temporary file next to the target and renamed only when
complete, so a failed run never leaves a partial video; [`check_output_path`] refuses an output that would replace an
input.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidOutputError, InvalidVideoError
from ..tempfiles import nearest_folder, partial_path, release_partial, remove_stale_partials, writable_problem
from .audio import MUXED_SOUND_FILTER
from .constants import OUTPUT_FORMATS, SAMPLE_RATE, VIDEO_FPS
from .files import ffmpeg_path, ffmpeg_reason, same_file
from .probe import VideoInfo, probe_hdr, probe_video  # noqa: F401 - VideoInfo is part of this module's interface

logger = logging.getLogger(__name__)


class _RotationNotice(logging.Filter):
    """imageio-ffmpeg warns, on every read, that a rotated video's frames are not the size stored in the file; that
    is the rotation being applied, which the input checks report once in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_RotationNotice())


_ZSCALE_TRANSFERS = {"hlg": "arib-std-b67", "pq": "smpte2084"}


def tone_map_filter(hdr: str) -> str:
    """The ffmpeg filters that tone-map HDR frames (``hdr``: ``"hlg"`` or ``"pq"``) to SDR BT.709 RGB: light made
    linear with 100 nits (SDR's reference white) as 1, BT.2020 primaries converted to BT.709 in linear floating
    point, highlights compressed by the Hable (filmic) curve without desaturating them (``desat=0`` keeps bright
    colours; tonemap's default greys them), then BT.709's transfer, 8-bit RGB: the usual chain of ffmpeg's zscale
    and tonemap filters, as media servers use it. The input is taken to be BT.2020 (primaries and non-constant
    luminance matrix), as HLG and PQ video is, also where the file names its transfer only (zscale would refuse it)."""
    return (f"zscale=tin={_ZSCALE_TRANSFERS[hdr]}:pin=2020:min=2020_ncl:t=linear:p=2020:npl=100,format=gbrpf32le,"
            "zscale=p=bt709,tonemap=tonemap=hable:desat=0,zscale=t=bt709,format=gbrp")

_TONE_MAP_NOTED: set[str] = set()


def _open(path: str, fps: float | None, hwaccel: str | None = None, hdr: str | None = None,
          every_frame: bool = False):
    filters = [*([f"fps={fps}"] if fps else []), *([tone_map_filter(hdr)] if hdr else [])]
    # the first video stream that is not a cover picture, as the probe and the input-timeline reader read it (left
    # to itself ffmpeg takes the largest one, e.g. a dashcam's second camera)
    output_params = ["-map", "0:V:0", *(["-vf", ",".join(filters)] if filters else [])]
    if every_frame:  # the decoder's frames, none dropped or repeated for the raw pipe's constant rate
        output_params += ["-fps_mode", "passthrough"]
    if hdr and path not in _TONE_MAP_NOTED:
        _TONE_MAP_NOTED.add(path)
        logger.info("%s is HDR video (%s): its frames are tone-mapped to SDR BT.709", path, hdr.upper())
    if worth_trying(hwaccel):
        try:
            return _start_decoder(path, output_params, ["-hwaccel", hwaccel])
        except InvalidVideoError as exc:
            opened = _start_decoder(path, output_params, None)  # a broken file fails here too, with its own error
            hardware_decode_failed(hwaccel, str(exc))
            return opened
    return _start_decoder(path, output_params, None)


def _start_decoder(path: str, output_params: list[str] | None, input_params: list[str] | None):
    try:
        gen = imageio_ffmpeg.read_frames(ffmpeg_path(path), input_params=input_params, output_params=output_params)
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as exc:
        text = str(exc)
        if "does not contain any stream" in text or "matches no streams" in text:  # none, or only a cover
            raise InvalidVideoError(f"no video stream in {path}") from None
        raise InvalidVideoError(f"cannot read video {path}: {ffmpeg_reason(text, 1)}") from None
    if not meta.get("size") or "fps" not in meta:
        gen.close()
        raise InvalidVideoError(f"no video stream in {path}")
    return gen, meta


_HWACCEL_FAILED: set[str] = set()


@functools.lru_cache(maxsize=1)
def hardware_decoders() -> tuple[str, ...]:
    """The hardware decoding methods the bundled ffmpeg was built with (``cuda``, ``vaapi``, ``qsv``, ...); whether
    the device behind one is present is only known when decoding starts."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-hwaccels"],
                         capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    return tuple(line.strip() for line in lines[1:] if line.strip())  # the first line is a heading


def check_hardware_codec(name: str, kind: str = "decoder") -> None:
    """ValueError unless ``name`` is a hardware ``kind`` (``"decoder"``: [`hardware_decoders`], ``"encoder"``:
    [`hardware_encoders`]) of the bundled ffmpeg; the message lists the ones it has."""
    known = hardware_decoders() if kind == "decoder" else hardware_encoders()
    if name not in known:
        raise ValueError(f"unknown hardware {kind} {name!r}; this ffmpeg has: {', '.join(known) or 'none'}")


def worth_trying(hwaccel: str | None) -> bool:
    """Whether to try hardware decoding with ``hwaccel``: asked for, and not already failed in this process."""
    return bool(hwaccel) and hwaccel not in _HWACCEL_FAILED


def hardware_decode_failed(hwaccel: str, reason: str) -> None:
    """Note that the ``hwaccel`` decoder could not start (no such GPU or driver): said once per process, and not
    tried again; the frames are then decoded on the CPU."""
    if hwaccel not in _HWACCEL_FAILED:
        _HWACCEL_FAILED.add(hwaccel)
        logger.warning("hardware video decoding (%s) is not available here (%s); decoding on the CPU", hwaccel,
                       reason.splitlines()[-1] if reason else "no reason given")


# ---------------------------------------------------------------------------------------------------- encoders
CPU_ENCODER = "libx264"
GPU_ENCODERS = ("h264_nvenc",)  # the GPUs' H.264 encoders whose constant-quality settings are known here
_ENCODER_WORKS: dict[str, bool] = {}


@functools.lru_cache(maxsize=1)
def hardware_encoders() -> tuple[str, ...]:
    """The GPU H.264 encoders this package can use (``h264_nvenc``: NVENC on NVIDIA GPUs) that the bundled ffmpeg
    was built with; whether the device behind one is present is checked when a video is first written."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-encoders"],
                         capture_output=True, text=True, check=False).stdout
    built = {line.split()[1] for line in out.splitlines() if len(line.split()) > 1}
    return tuple(name for name in GPU_ENCODERS if name in built)


def encoder_settings(encoder: str, crf: int, live: bool = False) -> dict[str, str]:
    """The codec options (ffmpeg's names) that make ``encoder`` write at constant quality ``crf`` (0-51, lower is
    better); ``live``: for frames shown as they are made (low latency)."""
    if encoder == CPU_ENCODER:
        return {"preset": "veryfast", "tune": "zerolatency", "crf": str(crf)} if live else \
            {"preset": "medium", "crf": str(crf)}
    if encoder == "h264_nvenc":  # NVENC's constant quality: a target (cq, on about x264's crf scale), no bit-rate cap
        return {"preset": "p1" if live else "p5", "tune": "ll" if live else "hq", "rc": "vbr", "cq": str(crf), "b": "0"}
    raise ValueError(f"unknown video encoder {encoder!r}; known: {', '.join((CPU_ENCODER, *GPU_ENCODERS))}")


def encoder_arguments(encoder: str, crf: int, live: bool = False) -> list[str]:
    """``encoder``'s settings as output options of the ffmpeg command (``-OPTION:v VALUE ...``)."""
    return [arg for key, value in encoder_settings(encoder, crf, live).items() for arg in (f"-{key}:v", value)]


def usable_encoder(encoder: str | None) -> str:
    """``encoder`` if it can encode here, else the CPU's libx264. A GPU encoder is tried once per process on a tiny
    picture; where it cannot start (no such GPU or driver) one warning says so and libx264 is used from then on."""
    if not encoder or encoder == CPU_ENCODER:
        return CPU_ENCODER
    if encoder not in _ENCODER_WORKS:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
               "color=size=256x256:rate=25:duration=0.2", "-c:v", encoder, *encoder_arguments(encoder, 18), "-f", "null",
               "-"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            hardware_encode_failed(encoder, "the encoder did not answer within 60 s")
        else:
            if proc.returncode == 0:
                _ENCODER_WORKS[encoder] = True
            else:  # ffmpeg's first complaint is the encoder's own (e.g. "Cannot load libcuda.so.1")
                first = next((line.strip() for line in proc.stderr.splitlines() if line.strip()), "")
                hardware_encode_failed(encoder, first.split("] ", 1)[-1] or f"ffmpeg exit code {proc.returncode}")
    return encoder if _ENCODER_WORKS[encoder] else CPU_ENCODER


def hardware_encode_failed(encoder: str, reason: str) -> None:
    """Note that the GPU ``encoder`` could not start: said once per process, and libx264 is used from then on."""
    if _ENCODER_WORKS.get(encoder) is not False:
        _ENCODER_WORKS[encoder] = False
        logger.warning("hardware video encoding (%s) is not available here (%s); encoding with %s on the CPU",
                       encoder, reason, CPU_ENCODER)


PROBE = "probe"
"""[`iter_frames`]'s ``hdr`` default: read the file's header for its HDR transfer."""


def iter_frames(path: str | os.PathLike, fps: float | None = VIDEO_FPS, hwaccel: str | None = None,
                hdr: str | None = PROBE) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``(H, W, 3)``, resampled to ``fps`` (None keeps the source rate).

    ``hwaccel`` (e.g. ``"cuda"``: NVDEC) decodes on the GPU with ffmpeg's hardware decoder; the frames come back to
    memory as the CPU decoder would give them. Where it cannot start, decoding falls back to the CPU with one
    warning. HDR video (HLG or PQ, see [`VideoInfo`]) is tone-mapped to SDR BT.709 ([`tone_map_filter`]);
    ``hdr``: the file's HDR transfer when the caller probed it already (``VideoInfo.hdr``, None for SDR).
    """
    path = os.fspath(path)
    yield from _decode(path, fps, hwaccel, probe_hdr(path) if hdr == PROBE else hdr)


def iter_tone_mapped_frames(path: str | os.PathLike, hdr: str, hwaccel: str | None = None) -> Iterator[np.ndarray]:
    """Every frame of an HDR video (``hdr``: ``"hlg"`` or ``"pq"``, a probe's [`VideoInfo`] field) as the decoder
    returns it, none dropped or repeated, tone-mapped to SDR BT.709 RGB uint8 ``(H, W, 3)`` by ffmpeg's
    [`tone_map_filter`] and upright; ``hwaccel`` as in [`iter_frames`]."""
    return _decode(os.fspath(path), None, hwaccel, hdr, every_frame=True)


def _decode(path: str, fps: float | None, hwaccel: str | None, hdr: str | None, every_frame: bool = False
            ) -> Iterator[np.ndarray]:
    gen, meta = _open(path, fps, hwaccel, hdr, every_frame)
    w, h = meta["size"]
    try:
        for buf in gen:
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
    except RuntimeError as exc:
        raise InvalidVideoError(f"error while decoding {path}: {ffmpeg_reason(str(exc), 1)}") from exc
    finally:
        gen.close()


@dataclass
class FrameSource:
    """Frames at the model's frame rate that can be read more than once: a video file decoded by ffmpeg each time,
    or frames held in memory. Iterating yields RGB uint8 ``(H, W, 3)`` arrays."""

    label: str  # the file path, or "frames in memory"
    expected_frames: int  # frame count (estimated from the duration for files)
    read: Callable[[], Iterator[np.ndarray]]
    path: str | None = None
    timestamps: np.ndarray | None = None  # seconds from the first frame, when the frames keep the input's timing
    time_base: Fraction | None = None  # the clock of ``timestamps`` in the file
    sample_aspect: Fraction = Fraction(1)  # a pixel's width over its height as shown (anamorphic video: not 1)
    colors_known: bool = True  # False: a YUV file that does not name its matrix (players guess it; see VideoInfo)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.read()


FLOAT_RANGE_TOLERANCE = 0.01
"""How far float frames may stray outside [0, 1] (or [-1, 1]) before they are refused (rounding of a model's output is
clipped away)."""


def _frame_array(frame: Any) -> np.ndarray:
    """One in-memory frame as an ``(H, W, C)`` array of its own dtype: a PIL image in RGB, a torch tensor in diffusers'
    ``(C, H, W)`` layout moved to ``(H, W, C)``, a grey ``(H, W)`` frame with one channel."""
    if hasattr(frame, "convert") and hasattr(frame, "size"):  # PIL image
        return np.asarray(frame.convert("RGB"))
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: no need to import it here
    is_tensor = torch is not None and isinstance(frame, torch.Tensor)
    if is_tensor:
        frame = frame.detach().cpu()
        frame = (frame.float() if frame.is_floating_point() else frame).numpy()
    arr = np.asarray(frame)
    if arr.ndim == 2:
        return arr[..., None]
    if is_tensor and arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        return arr.transpose(1, 2, 0)
    return arr


def _image_array(frame: Any, i: int) -> np.ndarray:
    """Frame ``i`` as an ``(H, W, C)`` array ([`_frame_array`]), checked to be a picture: uint8 or float, with 1
    (grey), 3 (RGB) or 4 (RGBA) channels."""
    arr = _frame_array(frame)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or not (arr.dtype == np.uint8 or arr.dtype.kind == "f"):
        raise InvalidVideoError(f"frame {i} must be an RGB image: a uint8 array (H, W, 3), a float array in [0, 1], "
                                f"a tensor (3, H, W) or a PIL image, got {arr.dtype} {tuple(arr.shape)}")
    return arr


def _as_rgb_uint8(frame: Any, i: int, signed: bool = False) -> np.ndarray:
    """Frame ``i`` as RGB uint8 ``(H, W, 3)``: grey is repeated, alpha dropped (as PIL's ``convert("RGB")``), float
    frames in [0, 1] (``signed``: [-1, 1]) scaled to 0-255."""
    arr = _image_array(frame, i)
    if arr.dtype.kind == "f":
        arr = np.rint(np.clip((arr + 1.0) / 2.0 if signed else arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _float_range_is_signed(lowest: float, highest: float) -> bool:
    """Whether float frames whose values span ``[lowest, highest]`` are in [-1, 1] (else [0, 1]), as diffusers' image
    processors read them (negative values mean [-1, 1]).

    Raises:
        InvalidVideoError: NaN or values outside both ranges.
    """
    signed = lowest < 0.0
    low = -1.0 if signed else 0.0
    if not (math.isfinite(lowest) and math.isfinite(highest)) or lowest < low - FLOAT_RANGE_TOLERANCE \
            or highest > 1.0 + FLOAT_RANGE_TOLERANCE:
        raise InvalidVideoError(f"float frames must hold values in [0, 1] (or [-1, 1]), got {lowest:g} to "
                                f"{highest:g} (frames of 0-255 values: pass them as uint8)")
    return signed


def open_frames(video: str | os.PathLike | np.ndarray | Sequence[Any], fps: float = VIDEO_FPS,
                hwaccel: str | None = None) -> FrameSource:
    """A re-readable [`FrameSource`] for a video path (resampled to ``fps``; decoded by ``hwaccel`` where given, see
    [`iter_frames`]) or for frames in memory.

    In-memory frames are taken to be at ``fps`` already: an array ``(T, H, W, C)``, a tensor ``(T, C, H, W)`` (as
    diffusers' video pipelines return with ``output_type="pt"``) or ``(T, H, W, C)``, a sequence of such frames or of
    PIL images, or one PIL image (a one-frame video). uint8 frames are 0-255; float frames [0, 1], or [-1, 1] when any
    value is negative; grey frames (one channel or ``(H, W)``) are repeated to RGB and an alpha channel is dropped.

    Raises:
        InvalidVideoError: unreadable file, no frames, or frames of the wrong type, range or of different sizes.
    """
    if isinstance(video, (str, os.PathLike)):
        info = probe_video(video)
        return FrameSource(info.path, max(1, int(round(info.duration * fps))),
                           lambda: iter_frames(info.path, fps, hwaccel, info.hdr), info.path,
                           sample_aspect=info.sample_aspect, colors_known=info.colors_known)
    if hasattr(video, "convert") and hasattr(video, "size"):  # one PIL image: a still
        video = [video]
    ndim = getattr(video, "ndim", None)
    if ndim is not None and ndim != 4:
        raise InvalidVideoError(f"a video array must be (frames, height, width, channels) (a tensor may be (frames, "
                                f"channels, height, width)), got shape {tuple(video.shape)} (one picture: pass "
                                "[picture])")
    if len(video) == 0:
        raise InvalidVideoError("video has no frames: the frame sequence is empty")
    shape, lowest, highest = None, math.inf, -math.inf
    for i, frame in enumerate(video):
        arr = _image_array(frame, i)  # checked here, converted when read
        if arr.dtype.kind == "f" and arr.size:
            lowest, highest = min(lowest, float(arr.min())), max(highest, float(arr.max()))
        size = arr.shape[:2]
        if shape is None:
            shape = size
        elif size != shape:
            raise InvalidVideoError(f"frame {i} is {size}, frame 0 is {shape}: all frames must have the same size")
    signed = _float_range_is_signed(lowest, highest) if lowest <= highest else False

    def read() -> Iterator[np.ndarray]:
        return (_as_rgb_uint8(frame, i, signed) for i, frame in enumerate(video))

    return FrameSource("frames in memory", len(video), read)


def check_output_path(
    path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = True,
    create_folder: bool = False,
    remove_partials: bool = True,
) -> str:
    """``path`` as a string once it is safe to write the output there; also removes the partial files that killed
    runs left for this output (unless ``remove_partials`` is False: a check of many outputs ahead of their runs).

    Args:
        path: the output video (``.mp4``, ``.mov`` or ``.mkv``).
        inputs: files the run reads: the output may not be any of them (same path, hard link or symbolic link).
        overwrite: replace an existing file at ``path`` (when False, an existing file is refused).
        create_folder: a missing folder is fine (the caller creates it) as long as its nearest existing parent is a
            writable folder; when False the folder must exist.

    Raises:
        InvalidOutputError: unsupported format, a folder, an input file, an existing file without ``overwrite``, a
            name longer than the file system takes, or a folder that is missing or not writable (checked by creating
            and removing a file in it).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or path.endswith(("/", os.sep)):  # a folder, or a folder's name (it may not exist yet)
        raise InvalidOutputError(f"output path is a folder: {path} (give a file name ending in "
                                 f"{', '.join(OUTPUT_FORMATS)})")
    if ext not in OUTPUT_FORMATS:
        raise InvalidOutputError(f"unsupported output format {ext or '(no extension)'}: {path} (use one of "
                                 f"{', '.join(OUTPUT_FORMATS)})")
    for source in inputs:
        if same_file(path, os.fspath(source)):
            raise InvalidOutputError(f"output {path} is the input file {os.fspath(source)}: writing it would destroy "
                                     "the input; choose another output path")
    if os.path.lexists(path) and not overwrite:
        raise InvalidOutputError(f"output file already exists: {path} (pass --overwrite to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    existing, blocker = nearest_folder(folder)
    if blocker is not None and (blocker == folder or create_folder):
        raise InvalidOutputError(f"cannot create the output folder {folder}: {blocker} is a file")
    if existing != folder and not create_folder:
        raise InvalidOutputError(f"output folder does not exist: {folder}")
    name_bytes, name_max = len(os.path.basename(path).encode()), _name_max(existing)
    if name_bytes > name_max:
        raise InvalidOutputError(f"output file name is too long: {name_bytes} bytes (UTF-8), the file system takes "
                                 f"{name_max}: {path}")
    _check_writable(existing, folder)
    if existing == folder and remove_partials:
        remove_stale_partials(path)
    return path


def _name_max(folder: str) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        return 255


def _check_writable(folder: str, target: str) -> None:
    """[`InvalidOutputError`] unless a file can be created (and removed) in ``folder``."""
    problem = writable_problem(folder)
    if problem is not None:
        raise InvalidOutputError(f"output folder is not writable: {target} ({problem})")


class AtomicWriter:
    """The ``with`` behaviour of the video writers: on a clean exit ``close()`` (which publishes the file), on an error
    in the block or in ``close()`` itself ``abort()`` (which removes the partial file). Subclasses define both."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def even_sides(frame: np.ndarray) -> np.ndarray:
    """``frame`` ``(H, W, 3)`` with its last row / column repeated where H / W is odd: H.264 in 4:2:0 needs even
    sides, and repeating keeps every input pixel where it was (a resize would move them all)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


OUTPUT_COLORSPACE = 6
"""The YUV matrix of written H.264 (FFmpeg's ``AVCOL_SPC_SMPTE170M``: BT.601), the one ffmpeg and PyAV convert RGB
frames with; the files say so (with [`OUTPUT_COLOR_RANGE`]): an untagged file leaves the matrix to players' guesses
(BT.709 for HD pictures), which shift every colour of an HD output. Only the output of an input that does not name
its own matrix stays untagged: ffmpeg read that input with BT.601 too, so players guess both files alike and show
them alike."""

OUTPUT_COLOR_RANGE = 1
"""The range of written H.264 (FFmpeg's ``AVCOL_RANGE_MPEG``: limited, "TV" range), as the conversion makes it."""


def color_arguments() -> list[str]:
    """The ffmpeg output options that tag written video with [`OUTPUT_COLORSPACE`] and [`OUTPUT_COLOR_RANGE`]."""
    return ["-colorspace", str(OUTPUT_COLORSPACE), "-color_range", str(OUTPUT_COLOR_RANGE)]


class VideoWriter(AtomicWriter):
    """Encode RGB frames to H.264 (+ AAC audio from ``audio_path``) atomically, at quality ``crf``, with libx264 or
    the GPU ``encoder`` (e.g. ``"h264_nvenc"``; libx264 after one warning where it cannot start). ``sample_aspect``:
    the pixels' shape to record (the input's, see [`VideoInfo`]), so that players show an anamorphic video as wide
    as its input. ``tag_colors``: record the YUV matrix ([`OUTPUT_COLORSPACE`]); False for the frames of a file
    that does not name its own (``FrameSource.colors_known``).

    Use as a context manager: on a clean exit the file appears at ``path``; on an exception (or when ffmpeg cannot
    write the file, e.g. a full disk) nothing is left.
    """

    def __init__(self, path: str | os.PathLike, fps: float = VIDEO_FPS, audio_path: str | None = None, crf: int = 18,
                 encoder: str | None = None, sample_aspect: Fraction = Fraction(1), tag_colors: bool = True):
        self.path = check_output_path(path, [audio_path] if audio_path else ())
        self._tmp = partial_path(self.path)
        self.fps, self.audio_path, self.crf, self.encoder = fps, audio_path, crf, encoder
        self.sample_aspect, self.tag_colors = Fraction(sample_aspect), tag_colors
        self._proc: subprocess.Popen | None = None
        self._log: Any = None
        self.frames_written = 0

    def _start(self, width: int, height: int) -> None:
        codec = usable_encoder(self.encoder)
        rate = Fraction(self.fps).limit_denominator()
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(rate), "-i", "pipe:0"]
        if self.audio_path:
            cmd += ["-i", ffmpeg_path(self.audio_path), "-map", "0:v:0", "-map", "1:a:0", "-af", MUXED_SOUND_FILTER, "-c:a", "aac"]
        if self.sample_aspect != 1:
            cmd += ["-vf", f"setsar={self.sample_aspect.numerator}/{self.sample_aspect.denominator}"]
        cmd += ["-c:v", codec, "-pix_fmt", "yuv420p", *encoder_arguments(codec, self.crf),
                *(color_arguments() if self.tag_colors else []), self._tmp]
        # ffmpeg's complaints, for the message (a file never blocks ffmpeg, as a full pipe would); closed by close()
        # or abort()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        # its own session: Ctrl-C in a terminal reaches the whole process group; the run stops ffmpeg itself
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)

    def write(self, frame: np.ndarray) -> None:
        frame = even_sides(frame)
        if self._proc is None:
            self._start(frame.shape[1], frame.shape[0])
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
        except OSError:  # ffmpeg stopped: it says why
            raise self._failure() from None
        self.frames_written += 1

    def _failure(self) -> InvalidOutputError:
        """The one-line error of an ffmpeg that stopped (waits for it to end)."""
        code = self._proc.wait()
        self._log.seek(0)
        reason = ffmpeg_reason(self._log.read().decode(errors="replace"), code)
        return InvalidOutputError(f"cannot write {self.path}: {reason}")

    def close(self) -> None:
        """Finish encoding and move the file into place (only when ffmpeg wrote all of it)."""
        if self._proc is None:
            raise InvalidVideoError("no frames to write")
        try:
            self._proc.stdin.close()  # ffmpeg encodes what it holds and writes the end of the file
        except OSError:
            pass
        if self._proc.wait() != 0:
            raise self._failure()
        self._proc = None
        self._log.close()
        os.replace(self._tmp, self.path)
        release_partial(self._tmp)

    def abort(self) -> None:
        """Stop ffmpeg at once (without encoding what it holds) and remove the partial file."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._log):
                try:
                    stream.close()
                except OSError:  # a pipe to a dead ffmpeg cannot flush
                    pass
            self._proc = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
        release_partial(self._tmp)


def trim_media(src: str, dst: str, seconds: float, video: bool) -> str:
    """Copy the first ``seconds`` of ``src`` to ``dst``: the picture only (H.264) when ``video``, else the sound
    only (16 kHz mono)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", ffmpeg_path(src), "-t", f"{seconds}"]
    cmd += ["-an", "-c:v", "libx264", "-crf", "18"] if video else ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE)]
    subprocess.run(cmd + [ffmpeg_path(dst)], check=True, capture_output=True)
    return dst
