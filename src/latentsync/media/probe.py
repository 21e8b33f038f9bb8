"""Probing a video file with the bundled ffmpeg without decoding it: streams, size, frame rate, duration, display
matrix (rotation and mirroring), and the timestamps of the first packets (variable frame rate, truncation).

One ffmpeg run reads the container's header and copies up to [`SCANNED_PACKETS`] video packets to its ``framecrc``
output (timestamps only, no decoding), so a probe takes a few tens of milliseconds whatever the video's length.
ffmpeg's log gives a display matrix's angle but not whether it mirrors the picture, so a video that has one (a phone
video) is probed once more: its first packet is copied (for a codec MOV cannot hold, its first frame decoded) to a
MOV header, whose track header holds the whole matrix.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from dataclasses import dataclass
from fractions import Fraction

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidVideoError
from .files import check_input_file, ffmpeg_path, ffmpeg_reason

logger = logging.getLogger(__name__)

SCANNED_PACKETS = 1500
"""Video packets whose timestamps a probe reads (one minute at 25 fps): enough to tell a variable frame rate."""

VFR_TOLERANCE = 0.1
"""Frame intervals that differ from the typical one by more than this fraction count as irregular."""


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a video file (one probe is shared by its callers: see [`probe_video`]).

    Attributes:
        width, height: frame size as decoded, i.e. upright when the file carries rotation metadata.
        fps: the container's (average) frame rate.
        duration: seconds, from the header (0 when the header does not say, e.g. a still image).
        has_audio: whether the file has an audio stream.
        rotation: clockwise degrees (0, 90, 180 or 270) the file's metadata asks players to rotate the picture by;
            decoding applies it.
        mirrored: the metadata also asks players to mirror the picture left to right, after the rotation (a
            front camera's video); decoding applies it. A vertical flip is a mirror after a 180 degree rotation.
        frame_intervals: shortest and longest time between consecutive frames in the first packets, in seconds
            (None with fewer than three frames).
        truncated: the data ends before the header says it should (an incomplete download or recording).
        audio_tracks: how many audio streams the file has (screen recordings and films may have several; see
            [`~latentsync.media.audio.speech_track`]).
        sample_aspect: the width of a pixel over its height as players show the frames (upright): 1 for square
            pixels; anamorphic video (DVD, HDV, some broadcast streams) stores fewer columns than it shows.
        colors_known: whether the file says how its pixels are colours: it names its YUV matrix (``bt709``...), or
            its frames are not YUV (RGB, a palette). Players guess the matrix of the others (BT.709 for HD).
        hdr: the HDR transfer the file names: ``"hlg"`` (hybrid log-gamma, ``arib-std-b67``: phones' default),
            ``"pq"`` (perceptual quantizer, ``smpte2084``: HDR10), or None (SDR, or not said); the readers
            tone-map HDR frames to SDR BT.709.
        no_timestamps: neither the packets nor the header say when the frames are shown (a raw elementary stream:
            ``.h264``, ``.hevc``): it is read at a fixed frame rate, and its own timeline (``output_fps="input"``)
            cannot be kept.
    """

    path: str
    width: int
    height: int
    fps: float
    duration: float
    has_audio: bool
    rotation: int = 0
    frame_intervals: tuple[float, float] | None = None
    variable_frame_rate: bool = False
    truncated: bool = False
    mirrored: bool = False
    audio_tracks: int = 0
    sample_aspect: Fraction = Fraction(1)
    colors_known: bool = True
    hdr: str | None = None
    no_timestamps: bool = False


def _input_section(stderr: str) -> str:
    """The part of ffmpeg's log that describes the input file (not the output it was asked to write)."""
    start = stderr.find("Input #0")
    text = stderr[start:] if start >= 0 else stderr
    for marker in ("Stream mapping:", "Output #0"):
        end = text.find(marker)
        if end >= 0:
            text = text[:end]
    return text


def _streams(header: str) -> list[str]:
    """The stream lines of an input section (``Stream #0:1[0x2](eng): Audio: aac ...``)."""
    return [line for line in header.splitlines() if re.search(r"Stream #\d+:\d+", line)]


def _audio_streams(streams: list[str]) -> int:
    return sum("Audio:" in line for line in streams)


def probe_audio_tracks(path: str | os.PathLike) -> tuple[int, float]:
    """How many audio streams a file of any kind ffmpeg reads (video or audio) has, and its duration in seconds from
    the header (0 when the header does not say), without decoding; ``(0, 0.0)`` when ffmpeg cannot open it."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_path(path)]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)  # no output: exit code 1
    stderr = proc.stderr.decode(errors="replace")
    if "Input #0" not in stderr:
        return 0, 0.0
    header = _input_section(stderr)
    return _audio_streams(_streams(header)), _duration(header)


NAMED_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}
"""Channel counts of ffmpeg's named channel layouts (others are counted from their ``5.1``-style names)."""


def probe_audio_format(path: str | os.PathLike, index: int = 0) -> tuple[int, int]:
    """The sample rate (Hz) and channel count of audio track ``index`` (ffmpeg's ``0:a:INDEX``) of ``path``, from
    its header, without decoding; ``(0, 0)`` for what the header does not say (or a track the file lacks)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_path(path)]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)  # no output: exit code 1
    tracks = [line for line in _streams(_input_section(proc.stderr.decode(errors="replace"))) if "Audio:" in line]
    if index >= len(tracks):
        return 0, 0
    fields = [f.strip() for f in tracks[index].split("Audio:", 1)[1].split(",")]
    rate = next((int(m.group(1)) for f in fields if (m := re.fullmatch(r"(\d+) Hz", f))), 0)
    channels = 0
    for f in fields[2:] if len(fields) > 2 else []:
        layout = re.sub(r"\(.*\)$", "", f)  # 5.1(side) -> 5.1
        counted = re.fullmatch(r"(\d+) channels(?: \(.*\))?", f)
        if layout in NAMED_LAYOUTS or counted or re.fullmatch(r"\d+\.\d+(?:\.\d+)?", layout):
            channels = (NAMED_LAYOUTS.get(layout) or (int(counted.group(1)) if counted else
                        sum(int(n) for n in layout.split("."))))
            break
    return rate, channels


def _duration(header: str) -> float:
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", header)
    if not match:
        return 0.0
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _rotation(header: str) -> int:
    match = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", header, re.IGNORECASE)
    if match is None:
        match = re.search(r"\brotate\s*:\s*(-?\d+)", header)
    if match is None:
        return 0
    # ffmpeg reports the display matrix's counter-clockwise angle; players turn the picture clockwise by its negative
    return int(round(-float(match.group(1)))) % 360 if "rotation of" in match.group(0) else int(match.group(1)) % 360


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """The ISO BMFF (MP4/MOV) boxes in ``data[start:end]``: ``(type, payload start, payload end)``."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1 and start + 16 <= end:  # a 64-bit size follows the type
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:  # to the end
            size = end - start
        if size < header or start + size > end:  # cut short: nothing more to read
            return
        yield kind, start + header, start + size
        start += size


def _first_box(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """Payload bounds of the first ``kind`` box in ``data[start:end]``, or None."""
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


_MATRIX_COPIES = (
    ["-c", "copy"],  # no decoding: the codecs phones write (H.264, HEVC)
    ["-vf", "scale=2:2", "-pix_fmt", "rgb24", "-c:v", "rawvideo"],  # codecs MOV cannot hold: one frame, decoded
)


def _display_matrix(path: str) -> tuple[int, ...] | None:
    """The 3 x 3 display matrix (row by row, ffmpeg's fixed point) of the first video stream as ffmpeg reads it
    from any container: the stream's first frame is copied to a MOV header, whose track header holds the matrix.
    None where no copy can be made."""
    reason = ""
    for output in _MATRIX_COPIES:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-noautorotate", "-i", ffmpeg_path(path),
               "-map", "0:V:0", "-frames:v", "1", *output, "-f", "mov", "-movflags", "empty_moov+frag_keyframe", "-"]
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        data = proc.stdout
        moov = _first_box(data, 0, len(data), b"moov")
        trak = _first_box(data, *moov, b"trak") if moov else None
        tkhd = _first_box(data, *trak, b"tkhd") if trak else None
        # version 1 headers have 64-bit times; the matrix follows the times, ids, layer, group and volume
        offset = tkhd[0] + (52 if data[tkhd[0]] == 1 else 40) if tkhd else 0
        if proc.returncode == 0 and tkhd and offset + 36 <= tkhd[1]:
            return struct.unpack_from(">9i", data, offset)
        reason = ffmpeg_reason(proc.stderr.decode(errors="replace"), proc.returncode)
    logger.debug("cannot read the display matrix of %s (%s): its angle only is applied", path, reason)
    return None


def _orientation(matrix: tuple[int, ...]) -> tuple[int, bool]:
    """The clockwise rotation (degrees) and the left-right mirror, applied after it, that a display matrix asks for.

    The matrix takes a stored pixel ``(x, y)`` (y down) to ``(a*x + c*y, b*x + d*y)`` on screen, with ``a, b`` its
    first row and ``c, d`` its second. A negative determinant mirrors; taking the mirror out (negating ``a`` and ``c``)
    leaves a rotation whose clockwise angle is ``atan2(b, a)``.
    """
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    mirrored = a * d - b * c < 0
    if mirrored:
        a = -a
    if a == 0 and b == 0:  # degenerate: ffmpeg applies nothing
        return 0, False
    return round(math.degrees(math.atan2(b, a))) % 360, mirrored


def _sample_aspect(line: str) -> Fraction:
    """The sample (pixel) aspect ratio of a video stream line (``[SAR 4:3 DAR 16:9]``); 1 when it does not say."""
    match = re.search(r"\[SAR (\d+):(\d+) ", line)
    if match is None or not int(match.group(1)) or not int(match.group(2)):  # 0:1 is "unknown"
        return Fraction(1)
    return Fraction(int(match.group(1)), int(match.group(2)))


_FIELD_ORDERS = ("progressive", "top first", "bottom first", "top coded first (swapped)",
                 "bottom coded first (swapped)")


def _colors_known(line: str) -> bool:
    """Whether a video stream line names its YUV matrix (``yuv420p(tv, bt709, progressive)``,
    ``yuv420p(tv, bt709/unknown/unknown)``), or its frames are not YUV (``rgb24``, ``pal8``, ``bgra``)."""
    match = re.search(r", ([a-z0-9]+)(?:\(([^)]*)\))?[,\s]", line + " ")
    if match is None:
        return True
    pixel_format, details = match.group(1), (match.group(2) or "").split(", ")
    if not pixel_format.startswith(("yuv", "nv", "p0", "p2", "p4", "uyvy", "yuyv", "y2", "v210", "ayuv", "vuy")):
        return True
    matrices = [d.split("/")[0] for d in details if d and d not in ("tv", "pc") and d not in _FIELD_ORDERS]
    return any(m not in ("unknown", "reserved") for m in matrices)


HDR_TRANSFERS = {"arib-std-b67": "hlg", "smpte2084": "pq"}
"""The HDR transfer characteristics (ffmpeg's names) that [`VideoInfo.hdr`] reports, by their short names."""


def _hdr(line: str) -> str | None:
    """The HDR transfer ([`HDR_TRANSFERS`]) a video stream line names (``yuv420p10le(tv, bt2020nc/bt2020/arib-std-b67,
    progressive)``), or None."""
    return next((HDR_TRANSFERS[t] for t in re.split(r"[\s,/()]+", line) if t in HDR_TRANSFERS), None)


def probe_hdr(path: str | os.PathLike) -> str | None:
    """The HDR transfer of a file's first video stream, from its header only (see [`VideoInfo.hdr`]); None also
    where ffmpeg cannot read the file (the reader then says why). Remembered per file version ([`file_version`]): a
    training set reads each clip many times, and the probe costs about a third of reading a short clip."""
    path = os.fspath(path)
    try:
        version = file_version(path)
    except OSError:
        return None
    return _probe_hdr(path, version)


def file_version(path: str) -> tuple[int, ...]:
    """What tells the versions of the file ``path`` apart, for the probes remembered per file: its device, inode,
    size, modification time and status change time (a file rewritten or replaced is another version, and is probed
    again).

    The modification time alone misses a file rewritten in place with the same size by a tool that then puts its old
    modification time back (``os.utime``, ``touch -r``, ``rsync --times``, ``cp -p``, an unpacked archive). The
    status change time (``st_ctime_ns``) on Linux and macOS is set by the system on every write, truncation, rename
    and ``utime`` call, and no user tool can set it. On Windows, Python's ``st_ctime`` is the creation time instead
    (the change time is not in ``os.stat``): it is kept in the key, where it is harmless, but there a same-size
    rewrite whose modification time is put back is not noticed within one process.

    Raises:
        OSError: the file cannot be looked at.
    """
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@lru_cache(maxsize=4096)
def _probe_hdr(path: str, version: tuple[int, ...]) -> str | None:
    """[`probe_hdr`] of one ``version`` ([`file_version`]) of the file ``path``."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_path(path)]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)  # no output: exit code 1
    video = [line for line in _streams(_input_section(proc.stderr.decode(errors="replace")))
             if "Video:" in line and "(attached pic)" not in line]
    return _hdr(video[0]) if video else None


def _frame_rate(line: str) -> float:
    for unit in ("fps", "tbr"):
        match = re.search(rf"([\d.]+)(k?) {unit}\b", line)
        if match:
            return float(match.group(1)) * (1000 if match.group(2) else 1)
    return 0.0


_NO_PTS = -(2**63)
"""What ``framecrc`` writes for a packet without a presentation time (ffmpeg's ``AV_NOPTS_VALUE``)."""


def _packet_times(framecrc: str) -> np.ndarray | None:
    """Presentation times (seconds, sorted) of the video packets in ffmpeg's ``framecrc`` output; None when some
    packet has none (a raw stream such as ``.h264``, or an AVI with B-frames): the packets then do not say when their
    frames are shown."""
    base = re.search(r"#tb 0: (\d+)/(\d+)", framecrc)
    if base is None:
        return np.empty(0)
    tb = Fraction(int(base.group(1)), int(base.group(2)))
    pts = [int(fields[2]) for line in framecrc.splitlines()
           if line and not line.startswith("#") and len(fields := line.split(",")) > 3 and fields[0].strip() == "0"]
    if _NO_PTS in pts:
        return None
    return np.unique(np.array(pts, dtype=np.int64)) * float(tb)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read size, frame rate, duration, rotation, mirroring and audio presence, and scan the first packets'
    timestamps. Remembered per file version ([`file_version`]), as [`probe_hdr`]: a run's checks (the command
    line's, then the pipeline's) and its reader share one probe, and a file changed in between is probed again.

    Raises:
        InvalidVideoError: missing, empty, unreadable, or without a video stream (a cover picture in an audio file
            does not count).
    """
    path = check_input_file(path, InvalidVideoError, "video")
    try:
        version = file_version(path)
    except OSError as exc:  # gone since it was checked
        raise InvalidVideoError(f"cannot read video file {path}: {exc.strerror or exc}") from None
    return _probe_video(path, version)


@lru_cache(maxsize=4096)
def _probe_video(path: str, version: tuple[int, ...]) -> VideoInfo:
    """[`probe_video`] of one ``version`` ([`file_version`]) of the checked file ``path`` (errors are not
    remembered)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_path(path), "-map", "0:V:0?", "-c", "copy",
           "-frames:v", str(SCANNED_PACKETS), "-f", "framecrc", "-"]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    stderr = proc.stderr.decode(errors="replace")
    header = _input_section(stderr)
    if "Input #0" not in stderr:
        raise InvalidVideoError(f"cannot read video {path}: {ffmpeg_reason(stderr, proc.returncode)}")
    streams = _streams(header)
    video = [line for line in streams if "Video:" in line and "(attached pic)" not in line]
    if not video:
        raise InvalidVideoError(f"no video stream in {path}")
    size = re.search(r"[ ,](\d+)x(\d+)[ ,\[]", video[0] + " ")
    if size is None:
        raise InvalidVideoError(f"cannot read video {path}: ffmpeg reports no frame size")
    width, height = int(size.group(1)), int(size.group(2))
    rotation, mirrored = _rotation(header), False
    if re.search(r"display ?matrix", header, re.IGNORECASE):  # the log gives its angle only, not whether it mirrors
        matrix = _display_matrix(path)
        if matrix is not None:
            rotation, mirrored = _orientation(matrix)
    sample_aspect = _sample_aspect(video[0])
    if rotation in (90, 270):  # turned upright, a pixel's width is its stored height
        width, height, sample_aspect = height, width, 1 / sample_aspect
    # ffmpeg's demuxer says so when the data stops before the index says it should (a container's duration is its
    # longest stream's, so comparing it with the video's timestamps would mistake a long soundtrack for truncation)
    truncated = "partial file" in stderr
    times = _packet_times(proc.stdout.decode(errors="replace"))
    duration = _duration(header)
    intervals = np.diff(times) if times is not None else np.empty(0)
    intervals = intervals[intervals > 0]
    frame_intervals, vfr = None, False
    if len(intervals) >= 2:
        typical = float(np.median(intervals))
        frame_intervals = (float(intervals.min()), float(intervals.max()))
        irregular = np.abs(intervals - typical) > VFR_TOLERANCE * typical
        # a cut file loses frames of its last group of pictures: gaps there are not a variable frame rate
        vfr = bool(irregular.mean() > 0.01) and not truncated
    audio_tracks = _audio_streams(streams)
    return VideoInfo(path, width, height, _frame_rate(video[0]), duration, audio_tracks > 0, rotation,
                     frame_intervals, vfr, truncated, mirrored, audio_tracks, sample_aspect, _colors_known(video[0]),
                     _hdr(video[0]), no_timestamps=times is None and duration == 0)
