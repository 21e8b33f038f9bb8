"""`LatentSyncPipeline`: talking-face video + speech in, lip-synced video out (spec sections 2-4)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm
from transformers import WhisperFeatureExtractor

from . import audio as audio_lib
from .alignment import FaceAligner, smooth_anchors
from .errors import InvalidVideoError, NoFaceError
from .face_detection import FaceDetector
from .mask import mouth_mask
from .streaming import OrderedWorker, StageTimer, prefetch
from .models import LatentSyncUNet, WhisperAudioEncoder
from .video_io import VideoWriter, iter_frames, probe_video

logger = logging.getLogger(__name__)

FPS = audio_lib.VIDEO_FPS


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
    ([`~diffusers.DDIMScheduler`]). ``resolution`` is the side of the aligned face (256 for 1.5, 512 for 1.6).

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
        scheduler: DDIMScheduler,
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

    # ------------------------------------------------------------------ stages
    def encode_audio(self, audio: np.ndarray, window_mode: audio_lib.AudioWindowMode = "official") -> torch.Tensor:
        """Whisper token features ``(tokens, states, d_model)`` for 16 kHz mono audio."""
        mel = audio_lib.log_mel(audio, self.feature_extractor)
        return audio_lib.whisper_features(mel, self.audio_encoder, mode=window_mode)

    def _vae_encode(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        latents = dist.sample(generator=generator)
        shift = self.vae.config.shift_factor or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae.config.shift_factor or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        dtype = self.vae.dtype
        if dtype == torch.float16 and self.vae.config.force_upcast:
            # fp16 SD-VAE decoding overflows to NaN (black frames, notably on Apple MPS): decode in fp32
            self.vae.to(torch.float32)
            out = self.vae.decode(latents.float()).sample
            self.vae.to(dtype)
            return out
        return self.vae.decode(latents.to(dtype)).sample

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
    ) -> np.ndarray:
        """Inpaint the lower half of aligned faces ``(f, R, R, 3)`` uint8 under per-frame ``audio_context``.

        Returns the decoded faces ``(f, R, R, 3)`` uint8. ``init_noise`` is ``(1, 4, 1, R/8, R/8)``, shared by
        every frame (official behaviour).
        """
        device = self._execution_device
        dtype = self.unet.dtype
        f = faces.shape[0]
        res = self.config.resolution
        pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mask = torch.from_numpy(np.array(mouth_mask(res)))[None, None]
        timer = timer or StageTimer()
        with timer("vae_encode"):
            ref_latents = self._vae_encode(pixels, generator)
            masked_latents = self._vae_encode(pixels * mask, generator)
        h, w = ref_latents.shape[-2:]
        mask_latent = F.interpolate(mask, size=(h, w), mode="nearest").expand(f, 1, h, w)

        def to_video(x: torch.Tensor) -> torch.Tensor:  # (f, c, h, w) -> (1, c, f, h, w)
            return x.permute(1, 0, 2, 3).unsqueeze(0).to(device=device, dtype=dtype)

        cond = torch.cat([to_video(mask_latent), to_video(masked_latents), to_video(ref_latents)], dim=1)
        context = audio_context.to(device=device, dtype=dtype)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            cond = torch.cat([cond, cond])
            context = torch.cat([torch.zeros_like(context), context])
        latents = init_noise.to(device=device, dtype=dtype).expand(-1, -1, f, -1, -1).clone()
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with timer("denoise"):
            for t in self.scheduler.timesteps:
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise_pred = self.unet(torch.cat([model_in, cond], dim=1), t, encoder_hidden_states=context).sample
                if do_cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
        with timer("vae_decode"):
            decoded = self._vae_decode(latents[0].permute(1, 0, 2, 3))
            out = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return out.permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------------ video passes
    def _analyze(self, video: str, detector: FaceDetector, cache_path: str | None, expected: int, timer: StageTimer):
        """First pass: anchors for every 25 fps frame (NaN where no face); optionally caches frames to disk."""
        anchors: list[np.ndarray] = []
        cache = None
        frames = iter_frames(video, FPS)
        bar = self._progress(None, "Face analysis", expected)
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
            raise InvalidVideoError(f"video has no frames: {video}")
        return np.stack(anchors), shape

    @staticmethod
    def _frames_in_order(video: str, order: np.ndarray, cache_path: str | None, shape) -> Iterator[np.ndarray]:
        if cache_path is None:
            frames = iter_frames(video, FPS)
            for _, frame in zip(order, frames):
                yield frame
            return
        store = np.memmap(cache_path, dtype=np.uint8, mode="r").reshape(-1, *shape)
        for j in order:
            yield np.asarray(store[j])

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        video: str | os.PathLike,
        audio: str | os.PathLike,
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
    ) -> LatentSyncPipelineOutput:
        """Lip-sync ``video`` to ``audio``.

        The video is read twice as a stream (face analysis, then generation) and written as it is produced, so
        memory does not grow with its length; only a video that must loop (audio longer than video) is cached,
        on disk.

        Args:
            video: path of the talking-face video (any format and frame rate ffmpeg reads).
            audio: path of the speech (any audio or video file with an audio stream); it replaces the video's audio.
            output_path: where to write the result (``.mp4``, ``.mov`` or ``.mkv``); None returns frames only.
            num_inference_steps: DDIM steps per 16-frame window.
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
        """
        timer = StageTimer()
        wall = time.perf_counter()
        video, audio = os.fspath(video), os.fspath(audio)
        info = probe_video(video)
        samples = audio_lib.load_audio(audio)
        audio_lib.check_not_silent(samples, audio)
        n_out = audio_lib.num_video_frames(len(samples))
        if output_path is not None:
            VideoWriter(output_path)  # validate the output path before the long work

        with timer("audio_features"):
            features = self.encode_audio(samples, audio_window_mode)

        aligner = FaceAligner(self.config.resolution)
        expected = max(1, int(round(info.duration * FPS)))
        with tempfile.TemporaryDirectory(prefix="latentsync-") as tmp:
            cache_path = os.path.join(tmp, "frames.u8") if n_out > expected - 2 else None
            with FaceDetector(face_index=face_index) as detector:
                anchors, shape = self._analyze(video, detector, cache_path, expected, timer)
            n_src = len(anchors)
            has_face = ~np.isnan(anchors[:, 0, 0])
            if not has_face.any():
                raise NoFaceError(f"no face found in any frame of {video}")
            order = pingpong_indices(n_src, n_out)
            if n_out > n_src and cache_path is None:  # the duration estimate was off: cache frames now
                cache_path = os.path.join(tmp, "frames.u8")
                with open(cache_path, "wb") as fh:
                    for frame in iter_frames(video, FPS):
                        fh.write(frame.tobytes())
            smoothed = smooth_anchors(anchors, landmark_smoothing)
            matrices = [aligner.matrix(a) if ok else None for a, ok in zip(smoothed, has_face)]
            no_face_out = int((~has_face[order]).sum())
            if no_face_out:
                logger.warning("%d of %d output frames have no face and pass through unchanged", no_face_out, n_out)

            latent_size = self.config.resolution // self.vae_scale_factor
            init_noise = torch.randn((1, self.unet.config.out_channels, 1, latent_size, latent_size),
                                     generator=generator, device=generator.device if generator is not None else "cpu")
            writer = VideoWriter(output_path, FPS, audio_path=audio, crf=crf) if output_path is not None else None
            kept: list[np.ndarray] = []

            def windows() -> Iterator[tuple]:
                """Decoded frames of each window, in output order, with the aligned faces to regenerate."""
                frames_iter = self._frames_in_order(video, order, cache_path, shape)
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

            source = prefetch(windows()) if overlap_stages else windows()
            sink = OrderedWorker(finish) if overlap_stages else None
            try:
                for start, idx, frames, sel, faces in self._progress(source, "Lip sync", -(-n_out // num_frames)):
                    new_faces = None
                    if sel:
                        ctx = audio_lib.frame_audio_contexts(features, np.array([start + k for k in sel]))
                        new_faces = self.generate_faces(faces, ctx, init_noise, num_inference_steps, guidance_scale,
                                                        generator, timer=timer)
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
