"""Audio-visual offset and sync confidence of a talking-face video (LSE-C / LSE-D, as syncnet_python evaluates).

For every video frame the SyncNet embeds a short window of mouth frames and the audio at the same time; the mean
distance between the visual and audio features is computed for audio shifted by ``-vshift ... +vshift`` frames.
``offset`` is the shift with the smallest mean distance and ``confidence = median - min`` of those mean distances:
a well-synced video has offset 0 and a clear minimum (the LatentSync data pipeline keeps clips with confidence >= 3
and |offset| <= 6 with the classic SyncNet).

Two networks are supported:

* [`~latentsync.models.SyncNetV2`], the classic SyncNet of syncnet_python (``syncnet_v2.model``; 3-D conv lip tower on 5-frame
  224 x 224 face crops, audio tower on 13 MFCCs x 20 steps, 1024-d, Euclidean distance). Its weights are not
  shipped: pass the file (the official LatentSync repos have it as ``auxiliary/syncnet_v2.model``).
* [`StableSyncNet`] (any trained config): 16-frame windows of aligned lower faces against Wav2Lip mel windows,
  distance = 1 - cosine similarity.

Offset convention (syncnet_python's): the audio feature that matches video frame ``i`` is at ``i - offset``.
Faces come from the project's MediaPipe detector (the original uses S3FD and IoU tracking over shots; here a
single face, the largest, is tracked through the whole video), so confidences are comparable in scale with the
original but not bit-identical.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import medfilt
from tqdm.auto import tqdm

from ..audio_features.wav2lip_mel import mel_window, num_mel_windows, wav2lip_mel
from ..errors import InvalidVideoError, LatentSyncInputError, NoFaceError
from ..face.alignment import FaceAligner, smooth_anchors
from ..face.detection import FaceDetector, largest_face
from ..loaders.official import load_syncnet
from ..media.audio import chosen_track, load_audio
from ..media.constants import SAMPLE_RATE, VIDEO_FPS
from ..media.video import iter_frames
from ..model_source import model_file
from ..models.syncnet import StableSyncNet
from ..models.syncnet_v2 import SyncNetV2
from ..utils import frames_to_pixels
from .config import OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO  # noqa: F401 - their home is config

logger = logging.getLogger(__name__)

CLASSIC_WINDOW = 5  # frames per lip window of the classic SyncNet
CLASSIC_MFCC_STEPS = 20  # 100 Hz MFCC steps per window (0.2 s)
CLASSIC_CROP = 224
CLASSIC_CROP_SCALE = 0.4
CLASSIC_SMOOTHING = 13  # median filter over face boxes (frames)


# ---------------------------------------------------------------------------------------------------- classic features


def classic_mfcc(audio_16k: np.ndarray) -> np.ndarray:
    """13 MFCCs at 100 Hz ``(13, T)`` as syncnet_python computes them (python_speech_features on int16 scale)."""
    try:
        import python_speech_features  # deferred: optional (eval extra), needed by the classic SyncNet only
    except ImportError as exc:  # pragma: no cover - declared in requirements
        raise ImportError("the classic SyncNet needs python_speech_features: pip install python_speech_features") from exc
    return python_speech_features.mfcc(np.asarray(audio_16k, dtype=np.float64) * 32768.0, SAMPLE_RATE).T


# ---------------------------------------------------------------------------------------------------- offsets


@dataclass
class SyncEstimate:
    """Result of a sync estimation.

    Attributes:
        offset: audio-visual offset in frames (syncnet_python convention: the audio matching video frame ``i`` is at
            ``i - offset``); 0 for a synced video.
        confidence: median minus minimum of the mean distances over offsets (higher = clearer sync).
        min_distance: the smallest mean distance.
        distances: mean distance for each offset ``-vshift ... +vshift`` (index ``vshift - offset``).
        frame_confidence: per-window confidence at the chosen offset, median-filtered (9).
        num_windows: number of windows (frames) compared.
    """

    offset: int
    confidence: float
    min_distance: float
    distances: list[float] = field(repr=False)
    frame_confidence: list[float] = field(repr=False)
    num_windows: int = 0

    def as_dict(self) -> dict:
        return dict(offset=self.offset, confidence=self.confidence, min_distance=self.min_distance,
                    num_windows=self.num_windows, distances=self.distances)


def offset_confidence(
    visual: torch.Tensor, audio: torch.Tensor, vshift: int = 15, metric: str = "euclidean",
    visual_starts: np.ndarray | torch.Tensor | None = None,
) -> SyncEstimate:
    """Offset and confidence from per-window features ``(N, D)`` (syncnet_python's ``calc_pdist`` + statistics).

    The audio features are zero-padded by ``vshift`` on both sides, as in the original, so windows near the ends
    compare against zeros (distance ``|v|`` for Euclidean, 1 for cosine).

    By default ``visual[i]`` and ``audio[i]`` are the windows at frame ``i``. With ``visual_starts`` the visual
    windows may be a subset (e.g. every other frame): ``visual[i]`` is then the window at frame ``visual_starts[i]``
    and ``audio`` holds one window per frame.
    """
    if visual.ndim != 2 or audio.ndim != 2 or visual.shape[1] != audio.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(visual.shape)} and {tuple(audio.shape)}")
    if visual_starts is None:
        n = min(len(visual), len(audio))
        visual, audio, starts = visual[:n], audio[:n], torch.arange(n)
    else:
        n, starts = len(visual), torch.as_tensor(np.asarray(visual_starts), dtype=torch.long)
        if starts.shape != (n,) or (n and int(starts.min()) < 0):
            raise ValueError(f"visual_starts must hold one frame index >= 0 per visual window, got "
                             f"{tuple(starts.shape)}")
    if n == 0 or len(audio) == 0:
        raise ValueError("no windows to compare: the video or audio is too short")
    visual, audio = visual.float(), audio.float()
    win = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, max(vshift, int(starts.max()) + vshift + 1 - len(audio))))
    idx = starts[:, None] + torch.arange(win)[None, :]  # (n, win)
    shifted = padded[idx]  # (n, win, D)
    v = visual[:, None, :].expand_as(shifted)
    if metric == "euclidean":
        dists = F.pairwise_distance(v.reshape(-1, v.shape[-1]), shifted.reshape(-1, v.shape[-1])).reshape(n, win)
    elif metric == "cosine":
        dists = 1.0 - F.cosine_similarity(v, shifted, dim=-1)
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    mean_dists = dists.mean(0)
    min_dist, minidx = torch.min(mean_dists, 0)
    median = torch.median(mean_dists)
    fconf = (median - dists[:, minidx]).numpy()
    frame_conf = medfilt(fconf, kernel_size=9) if len(fconf) >= 9 else fconf
    return SyncEstimate(
        offset=int(vshift - minidx),
        confidence=float(median - min_dist),
        min_distance=float(min_dist),
        distances=[float(x) for x in mean_dists],
        frame_confidence=[float(x) for x in frame_conf],
        num_windows=n,
    )


# ---------------------------------------------------------------------------------------------------- faces


def _fill_missing(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames without a face (edges hold the nearest value)."""
    if ok.all():
        return values
    t = np.arange(len(values))
    flat = values.reshape(len(values), -1).astype(np.float64)
    out = np.stack([np.interp(t, t[ok], flat[ok, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


def classic_face_crops(frames: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """syncnet_python crops ``(N, 224, 224, 3)`` BGR: box size/centre median-filtered, crop scale 0.4, pad 110."""
    s = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    k = min(CLASSIC_SMOOTHING, len(s) if len(s) % 2 else len(s) - 1)  # odd kernel no longer than the video
    if k >= 3:
        s, cx, cy = medfilt(s, k), medfilt(cx, k), medfilt(cy, k)
    crops = []
    cs = CLASSIC_CROP_SCALE
    for frame, bs, x, y in zip(frames, s, cx, cy):
        pad = int(bs * (1 + 2 * cs))
        bgr = np.pad(frame[..., ::-1], ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=110)
        my, mx = y + pad, x + pad
        face = bgr[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        crops.append(cv2.resize(face, (CLASSIC_CROP, CLASSIC_CROP)))
    return np.stack(crops)


def _detect_faces(frames: list[np.ndarray], anchors: bool):
    out = []
    with FaceDetector() as detector:
        for frame in tqdm(frames, desc="Face detection", leave=False):
            if anchors:
                a = detector.anchors(frame)
                out.append(a if a is not None else np.full((3, 2), np.nan))
            else:
                b = largest_face(detector.detect(frame))
                if b is not None:
                    out.append(np.array([b.x0, b.y0, b.x1, b.y1]))
                else:
                    out.append(np.full(4, np.nan))
    arr = np.stack(out)
    ok = ~np.isnan(arr.reshape(len(arr), -1)[:, 0])
    if not ok.any():
        raise NoFaceError("no face found in any frame")
    if not ok.all():
        logger.warning("%d of %d frames have no face; their face position is interpolated", (~ok).sum(), len(ok))
    return _fill_missing(arr, ok)


def aligned_mouths(frames: list[np.ndarray], resolution: int = 256, lower_half: bool = True,
                   smoothing: float = 1.5) -> np.ndarray:
    """Faces aligned like the training data ``(N, R/2 or R, R, 3)`` uint8 (MediaPipe anchors + FaceAligner)."""
    anchors = smooth_anchors(_detect_faces(frames, anchors=True), smoothing)
    aligner = FaceAligner(resolution)
    faces = np.stack([aligner.align(f, aligner.matrix(a)) for f, a in zip(frames, anchors)])
    return faces[:, resolution // 2 :] if lower_half else faces


# ---------------------------------------------------------------------------------------------------- features


@torch.no_grad()
def classic_features(
    model: SyncNetV2, crops: np.ndarray, mfcc: np.ndarray, batch_size: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame lip and audio features of the classic SyncNet (5-frame / 20-MFCC-step windows)."""
    device, dtype = model.device, model.dtype
    n = min(len(crops), mfcc.shape[1] // 4) - CLASSIC_WINDOW
    if n <= 0:
        raise LatentSyncInputError("video is too short for the SyncNet (needs more than 5 frames with audio)")
    video = torch.from_numpy(np.ascontiguousarray(crops)).permute(3, 0, 1, 2).float()  # (3, N, 224, 224)
    mfcc_t = torch.from_numpy(np.ascontiguousarray(mfcc)).float()
    lip, aud = [], []
    for i in tqdm(range(0, n, batch_size), desc="SyncNet v2", leave=False):
        js = range(i, min(n, i + batch_size))
        lip_in = torch.stack([video[:, j : j + CLASSIC_WINDOW] for j in js])
        aud_in = torch.stack([mfcc_t[None, :, 4 * j : 4 * j + CLASSIC_MFCC_STEPS] for j in js])
        lip.append(model.forward_lip(lip_in.to(device, dtype)).float().cpu())
        aud.append(model.forward_aud(aud_in.to(device, dtype)).float().cpu())
    return torch.cat(lip), torch.cat(aud)


@torch.no_grad()
def stable_features(
    model: StableSyncNet, mouths: np.ndarray, mel: np.ndarray, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-start-frame visual and audio embeddings of a StableSyncNet over aligned mouths ``(N, H, W, 3)``."""
    if model.config.latent_space:
        raise LatentSyncInputError("sync confidence with a latent-space SyncNet is not supported; use a pixel one")
    f = model.config.num_frames
    n = min(len(mouths) - f + 1, num_mel_windows(mel.shape[1], f))
    if n <= 0:
        raise LatentSyncInputError(f"video is too short for the SyncNet (needs at least {f} frames with audio)")
    device, dtype = model.device, model.dtype
    frames = frames_to_pixels(mouths)
    vis, aud = [], []
    for i in tqdm(range(0, n, batch_size), desc="StableSyncNet", leave=False):
        js = range(i, min(n, i + batch_size))
        v_in = torch.stack([frames[j : j + f].flatten(0, 1) for j in js])
        a_in = torch.stack([torch.from_numpy(np.ascontiguousarray(mel_window(mel, j, f)))[None] for j in js])
        vis.append(model.encode_frames(v_in.to(device, dtype)).float().cpu())
        aud.append(model.encode_audio(a_in.to(device, dtype)).float().cpu())
    return torch.cat(vis), torch.cat(aud)


def _read_video(video: str, max_frames: int | None) -> list[np.ndarray]:
    frames = []
    for frame in iter_frames(video, VIDEO_FPS):
        frames.append(frame)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise InvalidVideoError(f"video has no frames: {video}")
    return frames


def estimate_sync(
    video: str | os.PathLike,
    model: SyncNetV2 | StableSyncNet,
    audio: str | os.PathLike | None = None,
    vshift: int = 15,
    batch_size: int = 20,
    max_frames: int | None = None,
    faces_aligned: bool = False,
    audio_track: int | None = None,
) -> SyncEstimate:
    """Audio-visual offset (frames) and confidence of ``video`` (its own audio, or ``audio`` when given; of a file
    with several audio tracks, the one with the speech: [`~latentsync.media.audio.speech_track`]).

    Args:
        model: a [`SyncNetV2`] (classic, Euclidean) or a pixel [`StableSyncNet`] (cosine distance).
        vshift: largest offset tried, in frames (15 as syncnet_python).
        max_frames: only use the first frames (for long videos).
        faces_aligned: the video already shows aligned 256-style faces (our training clips): skip detection.
        audio_track: the audio track to score against instead, numbered from 1 as the log and players number them.
    """
    video = os.fspath(video)
    sound = os.fspath(audio) if audio is not None else video
    track = chosen_track(sound, audio_track)  # a track the file does not have: one line, before any decoding
    frames = _read_video(video, max_frames)
    samples = load_audio(sound, track=track)
    if isinstance(model, SyncNetV2):
        if faces_aligned:
            crops = np.stack([cv2.resize(f[..., ::-1], (CLASSIC_CROP, CLASSIC_CROP)) for f in frames])
        else:
            crops = classic_face_crops(frames, _detect_faces(frames, anchors=False))
        n_audio = len(samples) // 640
        vis, aud = classic_features(model, crops[:n_audio], classic_mfcc(samples), batch_size)
        metric = "euclidean"
    elif isinstance(model, StableSyncNet):
        res = int(model.config.resolution)
        if faces_aligned:
            faces = np.stack([cv2.resize(f, (res, res), interpolation=cv2.INTER_AREA) if f.shape[:2] != (res, res)
                              else f for f in frames])
            mouths = faces[:, res // 2 :] if model.config.lower_half else faces
        else:
            mouths = aligned_mouths(frames, res, model.config.lower_half)
        vis, aud = stable_features(model, mouths, wav2lip_mel(samples), batch_size)
        metric = "cosine"
    else:
        raise TypeError(f"model must be a SyncNetV2 or StableSyncNet, got {type(model).__name__}")
    return offset_confidence(vis, aud, vshift, metric)


def load_sync_model(
    model: str | os.PathLike, weights_name: str | None = None, subfolder: str | None = None,
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
) -> SyncNetV2 | StableSyncNet:
    """Load the network for [`estimate_sync`].

    * a file ``*.model`` (or any file that is not ``stable_syncnet.pt``): classic SyncNet v2 weights;
    * an official ``stable_syncnet.pt``: converted with [`latentsync.loaders.load_official_syncnet`];
    * a folder or Hub id: ``StableSyncNet.from_pretrained``, unless ``weights_name`` names a file inside the
      repo/folder (e.g. ``auxiliary/syncnet_v2.model`` of ``ByteDance/LatentSync-1.5``), which is fetched and
      loaded as above.
    """
    path = os.fspath(model)
    if weights_name:
        path = model_file(path, weights_name)
    if os.path.isfile(path):
        if os.path.basename(path).endswith(".pt") and "syncnet_v2" not in os.path.basename(path):
            net = load_syncnet(path)
        else:
            net = SyncNetV2.from_syncnet_python(path)
        return net.to(device=device, dtype=dtype).eval()
    net = StableSyncNet.from_pretrained(path, subfolder=subfolder, torch_dtype=dtype)
    return net.to(device).eval()
