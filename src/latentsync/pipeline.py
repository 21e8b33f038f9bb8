"""`LatentSyncPipeline`: talking-face video + speech in, lip-synced video out (spec sections 2-4)."""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm
from transformers import WhisperFeatureExtractor

from . import audio as audio_lib
from .alignment import FaceAligner, smooth_anchors
from .errors import InvalidVideoError, NoFaceError
from .face_detection import FaceDetector
from .mask import latent_mouth_mask, mouth_mask
from .streaming import OrderedWorker, StageTimer, prefetch
from .models import LatentSyncUNet, WhisperAudioEncoder
from .models.deep_cache import UNetFeatureCache
from .video_io import FrameSource, VideoWriter, open_frames

logger = logging.getLogger(__name__)

FPS = audio_lib.VIDEO_FPS
# An output at most this many frames longer than the video (or a video this short) loops from frames kept in
# memory; longer loops cache the decoded video on disk.
_MAX_TAIL_FRAMES = 32

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
"""Schedulers selectable by name with [`LatentSyncPipeline.set_scheduler`] (``ddim`` is the official one)."""


@dataclass
class LatentSyncPipelineOutput(BaseOutput):
    """Result of a [`LatentSyncPipeline`] call.

    Args:
        frames: output frames ``(N, H, W, 3)`` uint8 when requested (``return_frames=True``, or no output path).
        fps: frame rate of the output (always 25, the model's rate).
        path: written video file, or None.
        num_frames: number of output frames.
        frames_without_face: output frames passed through unchanged because no face was found in them.
        timings: busy seconds per stage (stages may overlap in time) and ``total`` wall-clock seconds.
    """

    frames: np.ndarray | None
    fps: float
    path: str | None
    num_frames: int
    frames_without_face: int
    timings: dict[str, float] = field(default_factory=dict)


def pingpong_indices(num_source: int, num_output: int) -> np.ndarray:
    """Source frame for each output frame: the video plays forward, backward, forward... (official looping)."""
    i = np.arange(num_output)
    if num_output <= num_source:
        return i
    k = i % (2 * num_source)
    return np.where(k < num_source, k, 2 * num_source - 1 - k)


class LatentCache:
    """VAE latents (reference, masked) of source frames that a looping video shows again.

    ``uses`` counts how often each source frame will be generated; an entry is kept only while later uses remain
    and freed after the last one, so the cache never holds more than one entry per source frame (on the CPU).
    ``encoded`` counts the frames actually run through the VAE encoder.
    """

    def __init__(self, uses: Counter):
        self.uses = uses
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0

    def get(self, key: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.entries.get(key)

    def put(self, key: int, ref: torch.Tensor, masked: torch.Tensor) -> None:
        if self.uses[key] > 1:
            self.entries[key] = (ref.cpu(), masked.cpu())

    def release(self, key: int) -> None:
        """Count one use of ``key`` as done; drop its entry after the last."""
        self.uses[key] -= 1
        if self.uses[key] <= 0:
            self.entries.pop(key, None)


class StreamedAudioFeatures:
    """Whisper token features computed one 30 s window at a time, when first needed (``"official"`` windows).

    Stands in for the ``(tokens, states, d_model)`` tensor of [`latentsync.audio.whisper_features`] in
    [`latentsync.audio.frame_audio_contexts`] (``shape`` and indexing by token), so that memory does not grow with
    the audio's length (the eager tensor takes about 0.4 MB per second of audio with the real model). Windows are
    independent in the official mode, so the values are those of the eager computation (up to float rounding of
    batched windows). The two most recent windows are kept.
    """

    def __init__(self, mel: np.ndarray, encoder: WhisperAudioEncoder, timer: StageTimer | None = None):
        self.mel = mel
        self.encoder = encoder
        self.timer = timer or StageTimer()
        self.shape = torch.Size((mel.shape[1] // 2, encoder.num_feature_states, encoder.config.d_model))
        self._windows: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _window(self, k: int) -> torch.Tensor:
        if k not in self._windows:
            span = audio_lib.WINDOW_MEL_FRAMES
            with self.timer("audio_features"):
                self._windows[k] = audio_lib.whisper_features(self.mel[:, k * span : (k + 1) * span], self.encoder)
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return self._windows[k]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        flat = torch.as_tensor(idx).reshape(-1)
        tokens = audio_lib.WINDOW_MEL_FRAMES // 2
        out = torch.empty((flat.numel(),) + tuple(self.shape[1:]), dtype=torch.float32)
        window = torch.div(flat, tokens, rounding_mode="floor")
        for k in window.unique().tolist():
            sel = window == k
            out[sel] = self._window(k)[flat[sel] - k * tokens]
        return out.reshape(tuple(torch.as_tensor(idx).shape) + tuple(self.shape[1:]))


def model_card(pipe: "LatentSyncPipeline") -> str:
    """Markdown model card (with Hub metadata) describing a saved pipeline."""
    unet = pipe.unet.config
    n_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    return f"""---
library_name: diffusers
pipeline_tag: video-to-video
tags:
- lip-sync
- latentsync
- audio-to-video
---

# LatentSync pipeline

Audio-conditioned latent-diffusion lip sync (LatentSync), saved with the
[latentsync](https://github.com/) library.

- U-Net: {n_params:.1f} M parameters, temporal layers: `{unet.motion_modules}`, frame-pooled GroupNorm:
  `{unet.frame_pooled_norm}`, audio cross-attention width {unet.cross_attention_dim}
- Face resolution: {pipe.config.resolution} px; output at 25 fps

```python
import torch
from latentsync import LatentSyncPipeline

pipe = LatentSyncPipeline.from_pretrained("<this repo>")
pipe(video="face.mp4", audio="speech.wav", output_path="synced.mp4",
     generator=torch.Generator().manual_seed(1247))
```

Intended use: dubbing and lip sync of consenting speakers. Do not use it to impersonate people or to deceive.
"""


class LatentSyncPipeline(DiffusionPipeline):
    """Audio-conditioned latent-diffusion lip sync (LatentSync).

    Components: ``unet`` ([`LatentSyncUNet`], 13 input channels, audio cross-attention), ``vae``
    ([`~diffusers.AutoencoderKL`], SD VAE), ``audio_encoder`` ([`WhisperAudioEncoder`], Whisper-tiny encoder),
    ``feature_extractor`` ([`~transformers.WhisperFeatureExtractor`]) and ``scheduler``
    ([`~diffusers.DDIMScheduler`] as in the official code; any diffusers scheduler works, e.g.
    ``pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`` or
    ``pipe.set_scheduler("dpm++")``). ``resolution`` is the side of the aligned face (256 for 1.5, 512 for 1.6).

    Speed and memory options: ``torch_dtype`` fp16/bf16 on a GPU, ``pipe.unet.compile()`` (torch.compile),
    ``deep_cache_interval`` (DeepCache feature reuse) and ``cache_latents`` at call time, [`enable_vae_slicing`],
    [`enable_vae_tiling`], and diffusers' ``enable_model_cpu_offload()`` / ``enable_sequential_cpu_offload()``.

    The output video is always 25 fps (the model's rate): inputs at other rates are resampled by time, and the
    output's length follows the audio (the video is trimmed, or looped forward and backward when too short).
    """

    model_cpu_offload_seq = "audio_encoder->unet->vae"

    def __init__(
        self,
        unet: LatentSyncUNet,
        vae: AutoencoderKL,
        audio_encoder: WhisperAudioEncoder,
        feature_extractor: WhisperFeatureExtractor,
        scheduler: SchedulerMixin,
        resolution: int = 256,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, audio_encoder=audio_encoder, feature_extractor=feature_extractor, scheduler=scheduler
        )
        self.register_to_config(resolution=resolution)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a saved pipeline, or an official release (``"ByteDance/LatentSync-1.6"``, ``"ByteDance/LatentSync-1.5"``
        or a folder with ``latentsync_unet.pt`` and ``whisper/tiny.pt``) converted on load.

        For official releases the extra keywords ``resolution`` and ``vae_id`` apply (see
        [`latentsync.conversion.load_official_pipeline`]); otherwise everything goes to diffusers.
        """
        from .conversion import is_official_layout, load_official_pipeline

        hub = {k: kwargs.get(k) for k in ("cache_dir", "revision", "token")}
        if is_official_layout(pretrained_model_name_or_path, local_files_only=kwargs.get("local_files_only", False),
                              **hub):
            return load_official_pipeline(pretrained_model_name_or_path, pipeline_class=cls, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ options
    def set_scheduler(self, name: str) -> SchedulerMixin:
        """Swap the scheduler for one of [`SCHEDULERS`] (``"ddim"``, ``"dpm++"``, ``"unipc"``, ``"euler"``), built
        from the current scheduler's config (same noise schedule); returns it."""
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)
        return self.scheduler

    def enable_vae_slicing(self) -> None:
        """Encode and decode the frames of a window one at a time (lower peak memory, same result)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode and decode images larger than the VAE's tile size in overlapping tiles (the SD VAE's tile is
        512 px, so this only affects faces above that size; the output changes slightly at tile seams)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    # ------------------------------------------------------------------ stages
    def encode_audio(self, audio: np.ndarray, window_mode: audio_lib.AudioWindowMode = "official") -> torch.Tensor:
        """Whisper token features ``(tokens, states, d_model)`` for 16 kHz mono audio."""
        mel = audio_lib.log_mel(audio, self.feature_extractor)
        return audio_lib.whisper_features(mel, self.audio_encoder, mode=window_mode)

    def _vae_encode(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # the execution device, not vae.device: under CPU offload the VAE's weights are elsewhere until it runs
        dist = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist
        latents = dist.sample(generator=generator)
        shift = self.vae.config.shift_factor or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae.config.shift_factor or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        dtype = self.vae.dtype
        sequential_offload = any(p.device.type == "meta" for p in self.vae.parameters())
        if dtype == torch.float16 and self.vae.config.force_upcast and not sequential_offload:
            # fp16 SD-VAE decoding overflows to NaN (black frames, notably on Apple MPS): decode in fp32
            self.vae.to(torch.float32)
            out = self.vae.decode(latents.float()).sample
            self.vae.to(dtype)
            return out
        return self.vae.decode(latents.to(dtype)).sample

    def _encode_conditions(
        self,
        pixels: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None,
        source_indices: Sequence[int] | None,
        latent_cache: LatentCache | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference and masked-face latents of a window, taken from ``latent_cache`` where present.

        The VAE posterior samples are drawn in the official order (masked faces first, then the reference faces),
        so that a seeded run draws the same random numbers as the official code."""
        if latent_cache is None or source_indices is None:
            masked = self._vae_encode(pixels * mask, generator)
            return self._vae_encode(pixels, generator), masked
        keys = [int(j) for j in source_indices]
        first = {key: k for k, key in reversed(list(enumerate(keys)))}  # a window can show a frame twice
        missing = sorted(k for key, k in first.items() if latent_cache.get(key) is None)
        new = {}
        if missing:
            sel = pixels[missing]
            masked = self._vae_encode(sel * mask, generator)
            ref = self._vae_encode(sel, generator)
            latent_cache.encoded += len(missing)
            for n, k in enumerate(missing):
                new[keys[k]] = (ref[n], masked[n])
                latent_cache.put(keys[k], ref[n], masked[n])
        device = self._execution_device
        pairs = [new[key] if key in new else latent_cache.get(key) for key in keys]
        ref = torch.stack([r.to(device) for r, _ in pairs])
        masked = torch.stack([m.to(device) for _, m in pairs])
        return ref, masked

    @torch.no_grad()
    def generate_faces(
        self,
        faces: np.ndarray,
        audio_context: torch.Tensor,
        init_noise: torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        timer: StageTimer | None = None,
        deep_cache_interval: int = 0,
        deep_cache_branch: int = 0,
        source_indices: Sequence[int] | None = None,
        latent_cache: LatentCache | None = None,
    ) -> np.ndarray:
        """Inpaint the lower half of aligned faces ``(f, R, R, 3)`` uint8 under per-frame ``audio_context``.

        Returns the decoded faces ``(f, R, R, 3)`` uint8. ``init_noise`` is ``(1, 4, 1, R/8, R/8)``, shared by
        every frame (official behaviour). ``deep_cache_interval`` > 0 reuses deep U-Net features between full
        passes (see [`~latentsync.models.deep_cache.UNetFeatureCache`]); ``latent_cache`` with ``source_indices``
        (the source frame of each face) reuses VAE encodings of frames seen before.
        """
        device = self._execution_device
        dtype = self.unet.dtype
        f = faces.shape[0]
        res = self.config.resolution
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        # the official masked image is the float32 face times the float64 mask, rounded once to the VAE's dtype
        mask = torch.from_numpy(np.array(mouth_mask(res)))[None, None]
        timer = timer or StageTimer()
        with timer("vae_encode"):
            ref_latents, masked_latents = self._encode_conditions(pixels, mask, generator, source_indices,
                                                                  latent_cache)
        h, w = ref_latents.shape[-2:]
        mask_latent = latent_mouth_mask(res, (h, w)).expand(f, 1, h, w)

        def to_video(x: torch.Tensor) -> torch.Tensor:  # (f, c, h, w) -> (1, c, f, h, w)
            return x.permute(1, 0, 2, 3).unsqueeze(0).to(device=device, dtype=dtype)

        cond = torch.cat([to_video(mask_latent), to_video(masked_latents), to_video(ref_latents)], dim=1)
        context = audio_context.to(device=device, dtype=dtype)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            cond = torch.cat([cond, cond])
            context = torch.cat([torch.zeros_like(context), context])
        latents = init_noise.to(device=device, dtype=dtype).expand(-1, -1, f, -1, -1).clone()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        # schedulers differ in what step() accepts (UniPC takes no generator)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        deep_cache = UNetFeatureCache(self.unet, deep_cache_interval, deep_cache_branch) if deep_cache_interval else None
        with timer("denoise"):
            for i, t in enumerate(self.scheduler.timesteps):
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                model_in = torch.cat([model_in, cond], dim=1)
                if deep_cache is not None:
                    noise_pred = deep_cache(model_in, t, context, step=i)
                else:
                    noise_pred = self.unet(model_in, t, encoder_hidden_states=context).sample
                if do_cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        with timer("vae_decode"):
            decoded = self._vae_decode(latents[0].permute(1, 0, 2, 3))
            out = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return out.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ video passes
    def _analyze(self, video: FrameSource, detector: FaceDetector, cache_path: str | None, timer: StageTimer):
        """First pass: anchors for every 25 fps frame (NaN where no face); optionally caches frames to disk."""
        anchors: list[np.ndarray] = []
        cache = None
        frames = iter(video)
        bar = self._progress(None, "Face analysis", video.expected_frames)
        while True:
            with timer("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            bar.update()
            with timer("face_detection"):
                a = detector.anchors(frame)
            anchors.append(a if a is not None else np.full((3, 2), np.nan))
            if cache_path is not None:
                if cache is None:
                    cache = open(cache_path, "wb")
                cache.write(frame.tobytes())
            shape = frame.shape
        bar.close()
        if cache is not None:
            cache.close()
        if not anchors:
            raise InvalidVideoError(f"video has no frames: {video.label}")
        return np.stack(anchors), shape

    @staticmethod
    def _frames_in_order(video: FrameSource, order: np.ndarray, cache_path: str | None, shape, n_src: int
                         ) -> Iterator[np.ndarray]:
        """Source frames in output ``order``: decoded as a stream, from a small in-memory tail when the output
        loops back by at most ``_MAX_TAIL_FRAMES``, or read one by one from the on-disk cache."""
        if cache_path is None:
            tail: deque[np.ndarray] = deque(maxlen=min(max(len(order) - n_src, 0), n_src))
            frames = iter(video)
            for pos, j in enumerate(order):
                if pos < n_src:
                    frame = next(frames, None)
                    if frame is None:
                        raise InvalidVideoError(f"{video.label} gave fewer frames on the second read than on the first")
                    if tail.maxlen:
                        tail.append(frame)
                else:  # looping back over the last frames
                    frame = tail[j - (n_src - len(tail))]
                yield frame
            return
        # plain reads rather than a memory map: mapped pages would count in (and grow) the resident set
        nbytes = int(np.prod(shape))
        with open(cache_path, "rb") as fh:
            for j in order:
                frame = np.empty(shape, np.uint8)
                fh.seek(int(j) * nbytes)
                if fh.readinto(frame.reshape(-1)) != nbytes:
                    raise InvalidVideoError(f"frame cache is truncated at frame {j} of {video.label}")
                yield frame

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        video: str | os.PathLike | np.ndarray | Sequence[np.ndarray | PIL.Image.Image],
        audio: str | os.PathLike | np.ndarray | torch.Tensor,
        output_path: str | os.PathLike | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        num_frames: int = 16,
        face_index: int | None = None,
        landmark_smoothing: float = 1.5,
        audio_window_mode: audio_lib.AudioWindowMode = "official",
        overlap_stages: bool = True,
        return_frames: bool = False,
        crf: int = 18,
        deep_cache_interval: int = 0,
        deep_cache_branch: int = 0,
        cache_latents: bool | None = None,
    ) -> LatentSyncPipelineOutput:
        """Lip-sync ``video`` to ``audio``.

        The video is read twice as a stream (face analysis, then generation) and written as it is produced, so
        memory does not grow with its length; only a video that must loop (audio longer than video) is cached,
        on disk.

        Args:
            video: path of the talking-face video (any format and frame rate ffmpeg reads), or its frames in memory
                at 25 fps (an RGB uint8 array ``(T, H, W, 3)``, or a list of ``(H, W, 3)`` arrays or PIL images).
            audio: path of the speech (any audio or video file with an audio stream), or its samples (mono float,
                16 kHz); it replaces the video's audio.
            output_path: where to write the result (``.mp4``, ``.mov`` or ``.mkv``); None returns frames only.
            num_inference_steps: denoising steps per 16-frame window.
            guidance_scale: classifier-free guidance on the audio (zero audio as unconditional); 1 disables it.
            generator: torch generator for the initial noise and VAE sampling (seed it for reproducible output).
            num_frames: frames denoised together (16 as in training).
            face_index: which face to lip-sync when several are visible: None = largest, k = k-th from the left.
            landmark_smoothing: temporal Gaussian sigma (frames) applied to face landmarks; 0 disables.
            audio_window_mode: ``"official"`` (independent 30 s Whisper windows, exact parity) or ``"overlap"``
                (overlapping windows, no discontinuity every 30 s on long audio).
            overlap_stages: decode/align and paste/encode in background threads while the model denoises
                (same output, faster).
            return_frames: also return all output frames in memory.
            crf: x264 quality of the written video (lower is better).
            deep_cache_interval: DeepCache feature reuse: run the whole U-Net every ``interval`` steps and only its
                shallow branch in between (0 = off; 3 as in DeepCache is about 2x fewer U-Net FLOPs at full size,
                at some quality cost, see the README's benchmarks). 1 gives the same output as 0.
            deep_cache_branch: depth of the recomputed shallow branch (0 = shallowest, fastest).
            cache_latents: VAE-encode each source frame once and reuse its latents when the video loops (default:
                on when the output is longer than the video). The VAE posterior sample is then drawn once per
                source frame instead of once per output frame, so the output differs slightly from
                ``cache_latents=False`` with the same seed.
        """
        timer = StageTimer()
        wall = time.perf_counter()
        source = open_frames(video, FPS)
        samples = audio_lib.as_samples(audio)
        audio_label = os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else "audio samples"
        audio_lib.check_not_silent(samples, audio_label)
        n_out = audio_lib.num_video_frames(len(samples))
        if output_path is not None:
            VideoWriter(output_path)  # validate the output path before the long work

        with timer("audio_features"):
            if audio_window_mode == "official":  # independent windows: computed as the video advances
                features = StreamedAudioFeatures(audio_lib.log_mel(samples, self.feature_extractor),
                                                 self.audio_encoder, timer)
            else:
                features = self.encode_audio(samples, audio_window_mode)

        aligner = FaceAligner(self.config.resolution)
        expected = source.expected_frames
        with tempfile.TemporaryDirectory(prefix="latentsync-") as tmp:
            # cache decoded frames on disk only when the output clearly loops back over more than a short tail
            loops_far = min(n_out - expected, expected) > _MAX_TAIL_FRAMES + 2
            cache_path = os.path.join(tmp, "frames.u8") if loops_far else None
            with FaceDetector(face_index=face_index) as detector:
                anchors, shape = self._analyze(source, detector, cache_path, timer)
            n_src = len(anchors)
            has_face = ~np.isnan(anchors[:, 0, 0])
            if not has_face.any():
                raise NoFaceError(f"no face found in any frame of {source.label}")
            order = pingpong_indices(n_src, n_out)
            if min(n_out - n_src, n_src) > _MAX_TAIL_FRAMES and cache_path is None:  # the estimate was off
                cache_path = os.path.join(tmp, "frames.u8")
                with open(cache_path, "wb") as fh:
                    for frame in source:
                        fh.write(frame.tobytes())
            smoothed = smooth_anchors(anchors, landmark_smoothing)
            matrices = [aligner.matrix(a) if ok else None for a, ok in zip(smoothed, has_face)]
            no_face_out = int((~has_face[order]).sum())
            if no_face_out:
                logger.warning("%d of %d output frames have no face and pass through unchanged", no_face_out, n_out)

            latent_size = self.config.resolution // self.vae_scale_factor
            # the official code draws this noise map first (before any VAE sample), in the U-Net's dtype
            init_noise = randn_tensor((1, self.unet.config.out_channels, 1, latent_size, latent_size),
                                      generator=generator, device=self._execution_device, dtype=self.unet.dtype)
            writer = None
            if output_path is not None:
                if isinstance(audio, (str, os.PathLike)):
                    audio_path = os.fspath(audio)
                else:  # samples in memory: muxed from a WAV copy
                    audio_path = os.path.join(tmp, "audio.wav")
                    audio_lib.write_wav(audio_path, samples)
                writer = VideoWriter(output_path, FPS, audio_path=audio_path, crf=crf)
            kept: list[np.ndarray] = []

            def windows() -> Iterator[tuple]:
                """Decoded frames of each window, in output order, with the aligned faces to regenerate."""
                frames_iter = self._frames_in_order(source, order, cache_path, shape, n_src)
                for start in range(0, n_out, num_frames):
                    idx = order[start : start + num_frames]
                    with timer("decode"):
                        frames = [next(frames_iter) for _ in idx]
                    sel = [k for k, j in enumerate(idx) if has_face[j]]
                    with timer("alignment"):
                        faces = np.stack([aligner.align(frames[k], matrices[idx[k]]) for k in sel]) if sel else None
                    yield start, idx, frames, sel, faces

            def finish(idx, frames, sel, new_faces) -> None:
                """Paste regenerated mouths back and write the window."""
                with timer("paste_back"):
                    for k, face in zip(sel, new_faces if new_faces is not None else []):
                        frames[k] = aligner.paste(frames[k], face, matrices[idx[k]])
                with timer("encode"):
                    for frame in frames:
                        if writer is not None:
                            writer.write(frame)
                        if return_frames or output_path is None:
                            kept.append(frame)

            if cache_latents is None:
                cache_latents = n_out > n_src
            latent_cache = LatentCache(Counter(int(j) for j in order if has_face[j])) if cache_latents else None

            window_iter = prefetch(windows()) if overlap_stages else windows()
            sink = OrderedWorker(finish) if overlap_stages else None
            try:
                for start, idx, frames, sel, faces in self._progress(window_iter, "Lip sync", -(-n_out // num_frames)):
                    new_faces = None
                    if sel:
                        ctx = audio_lib.frame_audio_contexts(features, np.array([start + k for k in sel]))
                        src = [int(idx[k]) for k in sel]
                        new_faces = self.generate_faces(
                            faces, ctx, init_noise, num_inference_steps, guidance_scale, generator, timer=timer,
                            deep_cache_interval=deep_cache_interval, deep_cache_branch=deep_cache_branch,
                            source_indices=src, latent_cache=latent_cache,
                        )
                        if latent_cache is not None:
                            for j in src:
                                latent_cache.release(j)
                    if sink is not None:
                        sink.submit(idx, frames, sel, new_faces)
                    else:
                        finish(idx, frames, sel, new_faces)
                if sink is not None:
                    sink.close()
                    sink = None
                if writer is not None:
                    with timer("encode"):
                        writer.close()
            except BaseException:
                if sink is not None:
                    sink.close_quietly()
                if writer is not None:
                    writer.abort()
                raise
        self.maybe_free_model_hooks()
        timings = timer.as_dict()
        timings["total"] = time.perf_counter() - wall
        return LatentSyncPipelineOutput(
            frames=np.stack(kept) if kept else None,
            fps=float(FPS),
            path=os.fspath(output_path) if output_path is not None else None,
            num_frames=n_out,
            frames_without_face=no_face_out,
            timings=timings,
        )

    # ------------------------------------------------------------------ saving and sharing
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save all components (safetensors) and ``model_index.json``, plus a model card ``README.md``."""
        super().save_pretrained(save_directory, **kwargs)
        card_path = os.path.join(save_directory, "README.md")
        if not os.path.exists(card_path):
            with open(card_path, "w", encoding="utf-8") as fh:
                fh.write(model_card(self))

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload LatentSync pipeline", private: bool | None = None,
                    token: str | None = None, **kwargs) -> str:
        """Save the pipeline with its model card and upload it to the Hub repo ``repo_id`` (created if needed)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, **kwargs)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return repo_id

    def _progress(self, iterable, desc: str, total: int | None = None):
        """tqdm bar for one stage, honouring ``set_progress_bar_config``."""
        config = {"desc": desc, "total": total, **getattr(self, "_progress_bar_config", {})}
        return tqdm(iterable, **config)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
