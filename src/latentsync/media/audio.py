"""Audio file reading and writing with the bundled ffmpeg, the choice of the track that holds the speech in a file
with several, and the audio checks of a lip-sync run."""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import imageio_ffmpeg
import numpy as np

from ..errors import InvalidAudioError, LatentSyncInputError
from ..tempfiles import make_work_dir, remove_work_dir
from .constants import SAMPLE_RATE, VIDEO_FPS
from .files import check_input_file, ffmpeg_path, ffmpeg_reason
from .probe import file_version, probe_audio_format, probe_audio_tracks

logger = logging.getLogger(__name__)

SILENCE_THRESHOLD = 1e-4
"""A track whose samples all stay below this magnitude (about -80 dBFS) is silent: nothing to lip-sync to."""


VIDEO_CLOCK_FILTER = "aresample=async=1:first_pts=0"
"""ffmpeg audio filter that places a track on its file's clock: silence before a track that starts after the video
and in its gaps of more than 0.1 s, a start before the file's trimmed; sample 0 is then at frame 0."""

SAMPLE_CLOCK_FILTER = "asetpts=N/SR/TB"
"""ffmpeg audio filter that times a track by its samples alone: the first at 0, the others back to back, as
[`load_audio`] reads them (without ``video_clock``). The writers mux the speech file's track through it, so that
the sound plays where the lips were made for it, also when the track starts after its file's other streams (a video
given as the speech, whose sound starts late) or has gaps."""

AAC_CHANNEL_LAYOUTS = ("mono", "stereo", "2.1", "3.0", "3.0(back)", "4.0", "quad", "quad(side)", "3.1", "5.0",
                       "5.0(side)", "4.1", "5.1", "5.1(side)", "6.0", "6.0(front)", "hexagonal", "6.1", "6.1(back)",
                       "6.1(front)", "7.0", "7.0(front)", "7.1", "7.1(wide)", "7.1(wide-side)", "5.1.2(back)",
                       "octagonal")
"""The channel layouts ffmpeg's AAC encoder takes (the output's sound is AAC)."""

MUXED_SOUND_FILTER = f"{SAMPLE_CLOCK_FILTER},aformat=channel_layouts={'|'.join(AAC_CHANNEL_LAYOUTS)}"
"""The ffmpeg audio filter of the sound the writers mux: timed by its samples ([`SAMPLE_CLOCK_FILTER`]), and mixed
down to an [`AAC_CHANNEL_LAYOUTS`] layout when it has another (a recorder's poly WAV of 10 or more channels, a
5.1.4 mix), which the encoder would refuse at the end of the run."""


# ---------------------------------------------------------------------------------------------------- speech track
SPEECH_BAND = (300.0, 3400.0)
"""Frequencies (Hz) of speech whose level decides which audio track holds the speech."""

TRACK_PROBE_WINDOWS = 4
TRACK_PROBE_SECONDS = 5.0
"""The probe that compares the audio tracks of a file: this many windows of this many seconds, spread evenly over
the file (the whole file when it is shorter than all of them together)."""

TRACK_MARGIN_DB = 6.0
"""The first audio track is used unless another one's speech-band level is higher by more than this many dB (twice
the amplitude): a silent or nearly silent first track (an unused microphone), or one much quieter than the voice."""

Track = int | Literal["speech"]
"""Which audio track of a file to read: its index among the file's audio streams (0: the first, ffmpeg's
``0:a:0``), or ``"speech"``: the one [`speech_track`] chooses."""


@dataclass(frozen=True)
class SpeechTrack:
    """Which audio track of ``path`` holds the speech.

    Attributes:
        index: the track, counted from 0 among the file's audio streams (ffmpeg's ``0:a:INDEX``).
        tracks: how many audio streams the file has.
        levels: the speech-band level (dB, 0 for a full-scale sine) of each track on the probe, None for a track
            that is silent there; empty when the file has fewer than two tracks (nothing to compare).
    """

    path: str
    index: int = 0
    tracks: int = 1
    levels: tuple[float | None, ...] = ()

    def describe(self) -> str:
        """One sentence for the log: the tracks, the one used and why."""
        levels = ", ".join(f"track {k + 1} {'silent' if db is None else f'{db:.0f} dB'}"
                           for k, db in enumerate(self.levels))
        return (f"{self.path} has {self.tracks} audio tracks: the speech is read from track {self.index + 1} "
                f"(speech-band level on a probe of the file: {levels})")

    def record(self) -> dict:
        """The choice for a JSON record; tracks are numbered from 1 there, as players and OBS number them."""
        return {"track": self.index + 1, "tracks": self.tracks,
                "levels_db": [None if db is None else round(db, 1) for db in self.levels]}


def _probe_windows(duration: float) -> list[tuple[float, float]]:
    """``(start, seconds)`` of the windows a track probe decodes in a file of ``duration`` seconds (0: unknown)."""
    total = TRACK_PROBE_WINDOWS * TRACK_PROBE_SECONDS
    if duration <= total:
        return [(0.0, total)]
    step = duration / TRACK_PROBE_WINDOWS
    return [(max(0.0, (k + 0.5) * step - TRACK_PROBE_SECONDS / 2), TRACK_PROBE_SECONDS)
            for k in range(TRACK_PROBE_WINDOWS)]


def speech_band_level(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float | None:
    """The mean power of ``samples`` between the [`SPEECH_BAND`] frequencies, in dB (0 for a full-scale sine in the
    band), or None when the samples are silent (every one below [`SILENCE_THRESHOLD`])."""
    if samples.size == 0 or float(np.abs(samples).max()) < SILENCE_THRESHOLD:
        return None
    spectrum = np.fft.rfft(samples.astype(np.float64))
    freqs = np.fft.rfftfreq(samples.size, 1.0 / sample_rate)
    band = (freqs >= SPEECH_BAND[0]) & (freqs <= SPEECH_BAND[1])
    power = 2.0 * float(np.sum(np.abs(spectrum[band]) ** 2)) / samples.size ** 2
    return 10.0 * np.log10(max(power / 0.5, 1e-12))


def _track_levels(path: str, tracks: int, duration: float) -> list[float | None]:
    """The speech-band level of each audio track on the probe windows: one ffmpeg run decodes the windows of every
    track to 16 kHz mono files in a work folder."""
    windows = _probe_windows(duration)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y"]
    for start, seconds in windows:
        cmd += ["-ss", f"{start:.3f}", "-t", f"{seconds:.3f}", "-i", ffmpeg_path(path)]
    folder = make_work_dir("tracks")
    try:
        outputs = {}
        for w in range(len(windows)):
            for k in range(tracks):
                outputs[w, k] = os.path.join(folder, f"{w}-{k}.f32")
                cmd += ["-map", f"{w}:a:{k}", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", outputs[w, k]]
        # a track that has no sound in a window leaves its file empty (ffmpeg then exits with an error): the other
        # outputs are complete, so the exit code is not looked at
        subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        levels = []
        for k in range(tracks):
            parts = [np.fromfile(outputs[w, k], dtype="<f4") for w in range(len(windows))
                     if os.path.isfile(outputs[w, k])]
            levels.append(speech_band_level(np.concatenate(parts)) if parts else None)
        return levels
    finally:
        remove_work_dir(folder)


@functools.lru_cache(maxsize=32)
def _choose_track(path: str, version: tuple[int, ...]) -> SpeechTrack:
    """[`speech_track`] of one ``version`` ([`~latentsync.media.probe.file_version`]) of the file ``path``."""
    tracks, duration = probe_audio_tracks(path)
    if tracks < 2:
        return SpeechTrack(path, 0, tracks)
    levels = _track_levels(path, tracks, duration)
    heard = [-np.inf if db is None else db for db in levels]
    best = int(np.argmax(heard))
    index = best if heard[best] > heard[0] + TRACK_MARGIN_DB else 0
    choice = SpeechTrack(path, index, tracks, tuple(levels))
    logger.info("%s", choice.describe())
    return choice


def speech_track(path: str | os.PathLike) -> SpeechTrack:
    """The audio track of ``path`` that holds the speech: the first, unless the file has several and another one is
    louder in the speech band (300-3400 Hz) by more than [`TRACK_MARGIN_DB`] on a short probe of the file
    ([`TRACK_PROBE_WINDOWS`] windows of [`TRACK_PROBE_SECONDS`]), as when the first track of a screen recording is
    an unused microphone or silent desktop audio and the voice is on the second. A file with several tracks is
    probed once per process (while it is unchanged) and the choice logged; a file with one track (or none, or one
    ffmpeg cannot open: reading it says why) is not decoded here.
    """
    path = os.fspath(path)
    try:
        version = file_version(path)
    except OSError:
        return SpeechTrack(path, 0, 0)
    return _choose_track(path, version)


AUTOMATIC_TRACK = f"the first, unless another is louder by more than {TRACK_MARGIN_DB:g} dB in the speech band"
"""[`speech_track`]'s rule, in words (for help texts)."""


def parse_track_number(text: str) -> int:
    """An audio track number as a user writes it (an option, a job list's cell): ``"2"``, counted from 1 as the log
    and players count them.

    Raises:
        ValueError: ``text`` is not a whole number >= 1.
    """
    value = text.strip()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"not an audio track number: {text!r}")
    return int(value)


def chosen_track(path: str | os.PathLike, number: int | None, name: str = "audio_track") -> Track:
    """The readers' ``track`` for audio track ``number`` of ``path``, numbered from 1 as the log, players and OBS
    number them (ffmpeg's ``0:a:0`` is track 1), or ``"speech"`` ([`speech_track`]'s choice) when ``number`` is None.
    ``name`` is the argument or option that gave ``number``, for messages. Only the file's header is read.

    Raises:
        LatentSyncInputError: ``number`` is not an integer >= 1.
        InvalidAudioError: the file is missing or unreadable, or has fewer audio tracks than ``number`` (the message
            says how many it has).
    """
    if number is None:
        return "speech"
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
        raise LatentSyncInputError(f"{name} must be an audio track number >= 1 (as the log and players number "
                                   f"them), got {number!r}")
    path = check_input_file(path, InvalidAudioError, "audio")
    tracks, _ = probe_audio_tracks(path)
    if 0 < tracks < number:  # no track at all (or not a media file): reading it says so
        raise InvalidAudioError(f"{name} {number}: {path} has {tracks} audio track{'s' * (tracks > 1)} "
                                f"(numbered from 1)")
    return int(number) - 1


@dataclass(frozen=True)
class AudioTrack(os.PathLike):
    """Audio track ``number`` of the file ``path``, numbered from 1 as the log, players and OBS number them: a path
    that the readers ([`load_audio`], [`scan_audio`], [`as_samples`]) and the output's muxing read from that track
    instead of their ``track`` argument. It chooses the track of each voice of a voice per face, e.g.
    ``{0: AudioTrack("obs.mkv", 2), 1: AudioTrack("obs.mkv", 3)}`` (``--audio-for 0:2=obs.mkv``).

    Raises:
        LatentSyncInputError: ``number`` is not an integer >= 1.
    """

    path: str
    number: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        number = self.number
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
            raise LatentSyncInputError(f"an audio track number is >= 1 (as the log and players number them), got "
                                       f"{number!r} for {self.path}")

    def __fspath__(self) -> str:
        return self.path


def track_index(path: str | os.PathLike, track: Track) -> int:
    """The index among ``path``'s audio streams (ffmpeg's ``0:a:INDEX``) of ``track`` (as [`load_audio`] takes it);
    an [`AudioTrack`] names its own."""
    if isinstance(path, AudioTrack):
        return path.number - 1
    path = os.fspath(path)
    if track == "speech":
        return speech_track(path).index
    if isinstance(track, bool) or not isinstance(track, int) or track < 0:
        raise ValueError(f'track must be an audio stream index >= 0 or "speech", got {track!r}')
    return track


def copy_track(path: str | os.PathLike, index: int, output: str | os.PathLike) -> str:
    """Copy audio track ``index`` of ``path`` as it is (no re-encoding, timestamps kept) to ``output``, a Matroska
    audio file (``.mka``), for a tool that takes a file's first track; returns ``output``.

    Raises:
        InvalidAudioError: ffmpeg cannot copy it.
    """
    path, output = os.fspath(path), os.fspath(output)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", ffmpeg_path(path), "-map", f"0:a:{index}",
           "-c", "copy", "-f", "matroska", output]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise InvalidAudioError(f"cannot copy audio track {index + 1} of {path}: "
                                f"{ffmpeg_reason(proc.stderr.decode(errors='replace'), proc.returncode)}")
    return output


# ---------------------------------------------------------------------------------------------------- decoding
def _decode_command(path: str, sample_rate: int, video_clock: bool = False, index: int = 0) -> list[str]:
    clock = ["-af", VIDEO_CLOCK_FILTER] if video_clock else []
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", ffmpeg_path(path), "-map", f"0:a:{index}",
            *clock,
            "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]


def _decode_error(path: str, returncode: int, stderr: bytes, index: int = 0) -> InvalidAudioError:
    text = stderr.decode(errors="replace")
    if "matches no streams" in text or "does not contain any stream" in text:
        return InvalidAudioError(f"no audio stream in {path}" if index == 0 else
                                 f"no audio track {index + 1} in {path}")
    return InvalidAudioError(f"cannot read audio from {path}: {ffmpeg_reason(text, returncode)}")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, video_clock: bool = False,
               track: Track = 0) -> np.ndarray:
    """Decode an audio track of any audio (or video) file to mono float32 at ``sample_rate`` Hz with ffmpeg.

    ``video_clock``: the track placed on the clock of the video's frames (see [`VIDEO_CLOCK_FILTER`]): for the sound
    of a video whose frames are decoded from the start of the file (a track that starts late would otherwise be out
    of sync by its delay). ``track``: the first audio track (0), another by its index, or ``"speech"``: the one
    that holds the speech in a file with several (see [`speech_track`]).

    Raises:
        InvalidAudioError: the file is missing, unreadable, has no audio stream (or not that track), or holds no
            samples.
    """
    index = track_index(path, track)
    path = check_input_file(path, InvalidAudioError, "audio")
    proc = subprocess.run(_decode_command(path, sample_rate, video_clock, index), capture_output=True)
    if proc.returncode != 0:
        raise _decode_error(path, proc.returncode, proc.stderr, index)
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    if audio.size == 0:
        raise InvalidAudioError(f"audio stream of {path} holds no samples")
    return audio.copy()


@dataclass
class AudioInfo:
    """What decoding an audio track found: its length and its loudest sample."""

    path: str
    duration: float
    peak: float

    @property
    def silent(self) -> bool:
        return self.peak < SILENCE_THRESHOLD


def scan_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, chunk_seconds: float = 30.0,
               what: str = "audio", track: Track = 0) -> AudioInfo:
    """Decode an audio track of ``path`` (``track`` as in [`load_audio`]) as a stream (constant memory, whatever its
    length) and measure its duration and peak, without keeping the samples; ``what`` names the file in messages
    (e.g. ``"audio for face 1"``).

    Raises:
        InvalidAudioError: the file is missing, unreadable, has no audio stream (or not that track), or holds no
            samples.
    """
    index = track_index(path, track)
    path = check_input_file(path, InvalidAudioError, what)
    proc = subprocess.Popen(_decode_command(path, sample_rate, index=index), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    count, peak, chunk = 0, 0.0, int(chunk_seconds * sample_rate) * 4
    try:
        while data := proc.stdout.read(chunk):
            samples = np.frombuffer(data[: len(data) // 4 * 4], dtype=np.float32)
            count += samples.size
            if samples.size:
                peak = max(peak, float(np.abs(samples).max()))
        stderr = proc.stderr.read()
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # stopped early (Ctrl-C): do not leave ffmpeg running
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if returncode != 0:
        raise _decode_error(path, returncode, stderr, index)
    if count == 0:
        raise InvalidAudioError(f"audio stream of {path} holds no samples")
    return AudioInfo(path, count / sample_rate, peak)


MAX_CHANNELS = 8
"""A two-dimensional array of samples whose shorter side is at most this long is read as channels, and mixed down."""

FLOAT_PEAK_LIMIT = 2.0
"""Float samples louder than this are not in [-1, 1] by mistake (e.g. 16-bit values stored as floats): refused."""


def as_samples(audio: str | os.PathLike | np.ndarray | Any, track: Track = "speech") -> np.ndarray:
    """Mono float32 samples at 16 kHz from a file (any format ffmpeg reads; of a file with several audio tracks,
    ``track`` as in [`load_audio`]: by default the one with the speech, [`speech_track`]) or from samples in memory
    (a NumPy array or a torch tensor, any length).

    Samples in memory are taken to be at 16 kHz (they cannot say their rate). Float samples are in [-1, 1]; integer
    ones are PCM (int16 as read from a WAV file, int32, uint8) and scaled to [-1, 1]; several channels, ``(C, N)`` as
    torchaudio gives them or ``(N, C)`` as soundfile does, are averaged to mono (as ffmpeg mixes a file's channels).

    Raises:
        InvalidAudioError: unreadable file, or samples that are not a number array, empty, of more than two
            dimensions, not finite, or floats far outside [-1, 1].
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, track=track)
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: no need to import it here
    if torch is not None and isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.is_floating_point() else audio).numpy()
    if isinstance(audio, tuple) and len(audio) == 2 and any(isinstance(x, int) for x in audio):
        raise InvalidAudioError("audio samples must be 16 kHz samples alone, got a (samples, sample rate) pair: "
                                "resample them to 16 kHz first, or pass a file path")
    try:
        samples = np.asarray(audio)
    except (TypeError, ValueError) as exc:
        raise InvalidAudioError(f"audio must be a file path or 16 kHz samples (NumPy array or tensor), got "
                                f"{type(audio).__name__}") from exc
    if samples.dtype.kind in "iu":  # PCM integers
        bits = 8 * samples.dtype.itemsize
        offset = 2.0 ** (bits - 1) if samples.dtype.kind == "u" else 0.0
        samples = ((samples.astype(np.float64) - offset) / 2.0 ** (bits - 1)).astype(np.float32)
    elif samples.dtype.kind != "f":
        raise InvalidAudioError(f"audio must be a file path or 16 kHz samples (NumPy array or tensor), got "
                                f"{type(audio).__name__} of {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2 and min(samples.shape) <= MAX_CHANNELS:
        samples = samples.mean(axis=int(np.argmin(samples.shape)), dtype=np.float32)
    if samples.ndim != 1:
        raise InvalidAudioError(f"audio samples must be mono (N,) or channels (C, N) / (N, C) at 16 kHz, got shape "
                                f"{samples.shape}")
    if samples.size == 0:
        raise InvalidAudioError("audio holds no samples")
    if not np.isfinite(samples).all():
        raise InvalidAudioError("audio samples contain NaN or infinity")
    peak = float(np.abs(samples).max())
    if peak > FLOAT_PEAK_LIMIT:
        raise InvalidAudioError(f"float audio samples must be in [-1, 1], got a peak of {peak:g} (16-bit samples: "
                                "pass them as int16, or divided by 32768)")
    return samples


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(os.fspath(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes(pcm.tobytes())


def check_not_silent(audio: np.ndarray | AudioInfo, path: str = "audio", threshold: float = SILENCE_THRESHOLD) -> None:
    """Raise [`InvalidAudioError`] when the whole track (samples, or the [`AudioInfo`] of a scan) is silent (nothing to
    lip-sync to)."""
    peak = audio.peak if isinstance(audio, AudioInfo) else float(np.abs(audio).max())
    if peak < threshold:
        raise InvalidAudioError(f"audio track of {path} is silent: there is no speech to lip-sync to")


def num_video_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Number of 25 fps frames that cover ``num_samples`` of audio (rounded to the nearest frame)."""
    return max(1, int(round(num_samples * fps / sample_rate)))


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` cut to ``length``, or padded with silence to it."""
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), samples.dtype)])


def mix_audio_files(tracks: Sequence[tuple[str | os.PathLike, int]], output: str | os.PathLike) -> str:
    """Mix audio tracks of files (``(path, index)``: ffmpeg's ``0:a:INDEX`` of each) into one FLAC file ``output``
    at their quality, with ffmpeg's filters: at the highest sample rate among them, stereo when any is not mono (a
    mono track plays in both channels at its level, more channels are mixed down), 24-bit. Each track is timed by
    its samples from its first ([`SAMPLE_CLOCK_FILTER`], as [`load_audio`] reads it for the lips); they are summed
    (as long as the longest), and the sum is scaled down as a whole when it would clip. Returns ``output``.

    Raises:
        InvalidAudioError: ffmpeg cannot read a track.
    """
    tracks = [(os.fspath(path), index) for path, index in tracks]
    formats = [probe_audio_format(path, index) for path, index in tracks]
    rate = max([r for r, _ in formats if r > 0], default=SAMPLE_RATE)
    stereo = any(c != 1 for _, c in formats)
    layout = "stereo" if stereo else "mono"
    chains = []
    for i, ((_, index), (_, channels)) in enumerate(zip(tracks, formats)):
        upmix = "pan=stereo|c0=c0|c1=c0," if stereo and channels == 1 else ""  # not -3 dB in each channel
        chains.append(f"[{i}:a:{index}]{SAMPLE_CLOCK_FILTER},{upmix}aresample={rate},"
                      f"aformat=sample_fmts=fltp:channel_layouts={layout}[v{i}]")
    mixed = "".join(f"[v{i}]" for i in range(len(tracks))) + \
        f"amix=inputs={len(tracks)}:duration=longest:dropout_transition=0:normalize=0"
    inputs = [arg for path, _ in tracks for arg in ("-i", ffmpeg_path(path))]

    def run(graph: str, *out: str) -> str:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *inputs, "-filter_complex",
               graph, *out]
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            raise InvalidAudioError(f"cannot mix the audio of {', '.join(dict.fromkeys(p for p, _ in tracks))}: "
                                    f"{ffmpeg_reason(stderr, proc.returncode)}")
        return stderr

    # the sum's peak first (astats, in float), then the mix, turned down by as much as it goes over full scale
    measured = run(f"{';'.join(chains)};{mixed},astats=measure_perchannel=none:measure_overall=Peak_level",
                   "-f", "null", "-")
    peaks = [float(v) for v in re.findall(r"Peak level dB: (-?[\d.]+|-?inf)", measured) if v.lstrip("-") != "inf"]
    gain = f",volume={-max(peaks):.4f}dB" if peaks and max(peaks) > 0 else ""
    run(f"{';'.join(chains)};{mixed}{gain}", "-c:a", "flac", "-sample_fmt", "s32", "-f", "flac", ffmpeg_path(output))
    return os.fspath(output)


@dataclass(frozen=True)
class VoiceMix:
    """The sound of a voice-per-face output: the mix of its voices, each a file (an [`AudioTrack`] names its track,
    else the one with the speech, as [`as_samples`] reads it) or 16 kHz samples in memory."""

    voices: tuple[Any, ...]

    def write(self, output: str | os.PathLike, work_path: Callable[[str], str]) -> str:
        """Write the mix to ``output`` at the files' quality ([`mix_audio_files`]); samples in memory are first
        written as 16 kHz WAV files at ``work_path(name)``. A track given for several faces (one person's tracks in
        several shots) is mixed in once. Returns ``output``."""
        tracks: dict[Any, tuple[str, int]] = {}
        for i, voice in enumerate(self.voices):
            if isinstance(voice, (str, os.PathLike)):
                index = track_index(voice, "speech")
                tracks.setdefault((os.path.realpath(os.fspath(voice)), index), (os.fspath(voice), index))
            elif not any(voice is other for other in self.voices[:i]):
                path = work_path(f"voice{i}.wav")
                write_wav(path, as_samples(voice))
                tracks[path] = (path, 0)
        return mix_audio_files(list(tracks.values()), output)


def mix_tracks(tracks: list[np.ndarray]) -> np.ndarray:
    """The sum of mono tracks (as long as the longest; shorter ones end in silence), scaled down as a whole when it
    would clip."""
    length = max(len(t) for t in tracks)
    mix = np.sum([fit_length(np.asarray(t, np.float32), length) for t in tracks], axis=0)
    peak = float(np.abs(mix).max()) if len(mix) else 0.0
    return (mix / peak).astype(np.float32) if peak > 1.0 else mix.astype(np.float32)
