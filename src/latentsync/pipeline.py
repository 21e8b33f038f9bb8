"""`LatentSyncPipeline`: talking-face video + speech in, lip-synced video out.

``__call__`` reads as the list of its steps, each one method of the pipeline: [`check_inputs`], [`encode_audio`],
the first pass over the video (faces, in [`~latentsync.streaming.VideoStream`]), [`prepare_latents`] (the initial
noise), then per window of 16 frames [`prepare_condition_latents`] (mouth mask, masked and reference faces through
the VAE), [`denoise`] and [`decode_latents`], and paste-back and writing (the stream again).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import imageio_ffmpeg
import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import is_xformers_available, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm
from transformers import WhisperFeatureExtractor

from . import hub
from ._deprecation import moved_attribute
from .audio_features.whisper import (
    AUDIO_WINDOW_MODES,
    AudioWindowMode,
    StreamedAudioFeatures,
    audio_contexts_at,
    encode_audio_features,
    frame_audio_contexts,
)
from .avatar import Avatar, check_avatar_destination, vae_fingerprint
from .errors import InvalidVideoError, LatentSyncInputError
from .face.alignment import smoothing_radius
from .face.choice import check_face_arguments, track_key
from .face.mask import latent_mouth_mask, mouth_mask
from .face.selection import FaceSelection, choose_faces
from .face.tracking import FaceTrack, FaceTracks, track_faces
from .face.warp import TorchFaceAligner
from .inputs import CheckedInputs, check_arguments, check_int, check_output_fps, check_run_inputs
from .live import LiveSession, LiveStream
from .loaders.lora import LatentSyncLoraLoaderMixin, check_no_lora_layers
from .loaders.official import is_official_layout, load_official_components
from .loaders.official import load_syncnet as load_syncnet_model
from .media.audio import Track, VoiceMix, as_samples, check_not_silent, fit_length, mix_tracks, num_video_frames
from .media.constants import SAMPLE_RATE, VIDEO_FPS
from .media.files import check_input_file, ffmpeg_path, same_file
from .media.timeline import open_timed_frames, output_timeline
from .media.video import FrameSource, check_hardware_codec, open_frames
from .model_source import check_not_training_run
from .models.audio_encoder import WhisperAudioEncoder
from .models.compiled import CompiledUNetStep, enable_fp8
from .models.deep_cache import UNetFeatureCache
from .models.syncnet import StableSyncNet
from .models.unet import LatentSyncUNet
from .pipeline_output import LatentSyncPipelineOutput
from .schedulers import scheduler_by_name
from .streaming import FrameWindow, LatentCache, VideoStream
from .streaming import pingpong_indices as _looping_order
from .tempfiles import write_atomically
from .utils import StageTimer, frames_to_pixels, pixels_to_frames, scale_latents, unscale_latents
from .window_batch import MAX_WINDOWS_PER_BATCH, WindowBatch, stack_windows, windows_that_fit

logger = logging.getLogger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from latentsync import LatentSyncPipeline

        >>> pipe = LatentSyncPipeline.from_pretrained("ByteDance/LatentSync-1.6", torch_dtype=torch.float16)
        >>> pipe = pipe.to("cuda")
        >>> out = pipe(video="face.mp4", audio="speech.wav", output_path="synced.mp4", num_inference_steps=20,
        ...            guidance_scale=1.5, generator=torch.Generator().manual_seed(1247))
        >>> out.path, out.num_frames, out.frames_without_face
        ('synced.mp4', 250, 0)

        >>> # no file: the frames in memory, as PIL images
        >>> images = pipe(video="face.mp4", audio="speech.wav", output_type="pil").frames

        >>> # watch or steer the denoising: the callback may replace "latents" or stop the run
        >>> def stop_after_first_window(pipe, step, timestep, callback_kwargs):
        ...     if step == pipe.num_timesteps - 1:
        ...         pipe._interrupt = True
        ...     return callback_kwargs
        >>> short = pipe(video="face.mp4", audio="speech.wav", callback_on_step_end=stop_after_first_window)
        >>> short.num_frames
        16
        ```
"""


_CALL_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_CALL_LOCKS_GUARD = threading.Lock()


def _call_lock(pipe: Any) -> threading.RLock:
    """The lock that makes threads take turns on ``pipe`` (kept outside it, so that copying a pipeline copies no
    lock)."""
    with _CALL_LOCKS_GUARD:
        lock = _CALL_LOCKS.get(pipe)
        if lock is None:
            lock = _CALL_LOCKS[pipe] = threading.RLock()
        return lock


def _placement_pinned(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a pipeline method inside [`LatentSyncPipeline._pinned_placement`]."""

    @functools.wraps(method)
    def wrapper(self: LatentSyncPipeline, *args: Any, **kwargs: Any) -> Any:
        with self._pinned_placement():
            return method(self, *args, **kwargs)

    return wrapper


class LatentSyncPipeline(DiffusionPipeline, LatentSyncLoraLoaderMixin):
    """Audio-conditioned latent-diffusion lip sync (LatentSync).

    Components: ``unet`` ([`LatentSyncUNet`], 13 input channels, audio cross-attention), ``vae``
    ([`~diffusers.AutoencoderKL`], SD VAE), ``audio_encoder`` ([`WhisperAudioEncoder`], Whisper-tiny encoder),
    ``feature_extractor`` ([`~transformers.WhisperFeatureExtractor`]) and ``scheduler``
    ([`~diffusers.DDIMScheduler`] as in the official code; any diffusers scheduler works, e.g.
    ``pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`` or
    ``pipe.set_scheduler("dpm++")``). ``resolution`` is the side of the aligned face (256 for 1.5, 512 for 1.6).
    The optional ``syncnet`` ([`StableSyncNet`]) is used only to find the speaking face (``face="speaking"``);
    without it a landmark score is used.

    Speed and memory options: ``torch_dtype`` fp16/bf16 on a GPU; GPU throughput: ``windows_per_batch`` at call
    time (several windows per U-Net call), [`compile_denoiser`] (torch.compile with fixed shapes, CUDA graphs),
    ``unet.set_fused_norm()``, [`enable_channels_last`], [`enable_warps_on_device`], [`enable_fp8`];
    ``deep_cache_interval`` (DeepCache feature reuse) and ``cache_latents`` at call time, [`enable_vae_slicing`],
    [`enable_vae_tiling`], and diffusers' ``enable_model_cpu_offload()`` / ``enable_sequential_cpu_offload()``.

    The output video is always 25 fps (the model's rate): inputs at other rates are resampled by time, and the
    output's length follows the audio (the video is trimmed, or looped forward and backward when too short).
    """

    model_cpu_offload_seq = "audio_encoder->unet->vae"
    _optional_components = ["syncnet"]
    _callback_tensor_inputs = ["latents", "condition_latents", "audio_embeds"]

    def __init__(
        self,
        unet: LatentSyncUNet,
        vae: AutoencoderKL,
        audio_encoder: WhisperAudioEncoder,
        feature_extractor: WhisperFeatureExtractor,
        scheduler: SchedulerMixin,
        resolution: int = 256,
        syncnet: StableSyncNet | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, audio_encoder=audio_encoder, feature_extractor=feature_extractor, scheduler=scheduler,
            syncnet=syncnet,
        )
        self.register_to_config(resolution=resolution)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a saved pipeline, or an official release (``"ByteDance/LatentSync-1.6"``, ``"ByteDance/LatentSync-1.5"``
        or a folder with ``latentsync_unet.pt`` and ``whisper/tiny.pt``) converted on load.

        For official releases the extra keywords ``resolution`` and ``vae_id`` apply (see
        [`latentsync.loaders.load_official_components`]); otherwise everything goes to diffusers. A folder or repo
        saved by this class also loads with plain ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``
        (see [`latentsync.hub`]); here its loader file is recognised and no ``trust_remote_code`` is needed.
        """
        check_not_training_run(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.get(k) for k in ("cache_dir", "revision", "token")}
        local_only = kwargs.get("local_files_only", False)
        if is_official_layout(pretrained_model_name_or_path, local_files_only=local_only, **hub_kwargs):
            syncnet = kwargs.pop("syncnet", None)
            return cls(**load_official_components(pretrained_model_name_or_path, **kwargs), syncnet=syncnet)
        if not kwargs.get("trust_remote_code") and hub.has_own_loader(pretrained_model_name_or_path,
                                                                     local_files_only=local_only, **hub_kwargs):
            kwargs["trust_remote_code"] = True  # the file only imports this class
            with hub.loader_lock():  # one process at a time through diffusers' copy of the loader file
                return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> LatentSyncPipeline:
        """Move and cast the components, as diffusers' ``DiffusionPipeline.to`` (``to("cuda")``, ``to(torch.float16)``,
        ``to("cpu", torch.bfloat16)``, ``to(device=..., dtype=...)``).

        Raises:
            TypeError: a keyword other than ``device``, ``dtype`` and ``silence_dtype_warnings`` (diffusers would
                ignore it, e.g. ``torch_dtype=``, and leave the pipeline as it was).
        """
        unknown = sorted(set(kwargs) - {"device", "dtype", "silence_dtype_warnings"})
        if unknown:
            raise TypeError(f"LatentSyncPipeline.to() got unexpected keyword {', '.join(unknown)}: pass the dtype as "
                            "dtype= (or positionally), as torch's .to() takes it")
        return super().to(*args, **kwargs)

    # ------------------------------------------------------------------ options
    def set_scheduler(self, name: str) -> SchedulerMixin:
        """Swap the scheduler for one of [`~latentsync.schedulers.SCHEDULERS`] (``"ddim"``, ``"dpm++"``, ``"unipc"``,
        ``"euler"``), built from the current scheduler's config (same noise schedule); returns it."""
        self.scheduler = scheduler_by_name(name, self.scheduler.config)
        return self.scheduler

    def load_syncnet(self, source: str | os.PathLike, **kwargs: Any) -> StableSyncNet:
        """Load a [`StableSyncNet`] as the pipeline's ``syncnet`` component (used to find the speaking face), on the
        pipeline's device and dtype: a diffusers folder or Hub id, or an official ``stable_syncnet.pt`` (the file,
        or a folder or Hub repo holding it, e.g. ``"ByteDance/LatentSync-1.6"``); ``kwargs`` go to
        [`~latentsync.loaders.load_syncnet`]. It is saved with the pipeline."""
        syncnet = load_syncnet_model(source, **kwargs).to(self.device, self.dtype).eval()
        self.register_modules(syncnet=syncnet)
        return syncnet

    def compile_denoiser(self, mode: str | None = None, backend: str | Callable = "inductor",
                         cuda_graphs: bool = False, fullgraph: bool = False,
                         regional: bool = False) -> CompiledUNetStep:
        """Run the U-Net steps through ``torch.compile`` (see [`~latentsync.models.compiled.CompiledUNetStep`]).

        Shapes then stay fixed through a call: every window is padded to ``num_frames`` frames (a frame mask keeps
        the padding out of the real frames) and every U-Net call holds ``windows_per_batch`` windows, so a video
        compiles once. The compilation's seconds are reported as ``timings["compile"]`` (not in ``"denoise"``) and
        the compiled graphs are kept for later calls. ``cuda_graphs`` replays each step as a CUDA graph. Frames equal
        the eager ones within float rounding. DeepCache steps (``deep_cache_interval``) run eagerly. ``regional``
        compiles each repeated block (ResNet blocks, transformers, motion modules) instead of the whole step: a
        shorter compilation, with the same fixed shapes; not with ``cuda_graphs``.
        """
        self._compiled_step = CompiledUNetStep(self.unet, mode, backend, cuda_graphs, fullgraph, regional)
        return self._compiled_step

    def disable_compiled_denoiser(self) -> None:
        """Back to the eager U-Net."""
        self._compiled_step = None

    def enable_channels_last(self) -> None:
        """Store the U-Net's convolution weights channels-last (NHWC): faster convolutions on tensor-core GPUs
        (and with ``torch.compile``); same results within float rounding."""
        self.unet.to(memory_format=torch.channels_last)

    def enable_fp8(self) -> int:
        """Quantise the U-Net's linear layers to float8 (torchao) on a GPU with FP8 tensor cores (compute capability
        8.9+); returns the number of layers converted. Changes the output slightly (the benchmark
        ``benchmarks/model_speed.py --fp8`` reports the drift against bf16). Call it after ``pipe.to("cuda")``.

        Raises:
            RuntimeError: no FP8-capable GPU, or torchao missing.
        """
        return enable_fp8(self.unet)

    def enable_warps_on_device(self, enabled: bool = True) -> None:
        """Align the faces and paste the mouths back with batched torch warps on the pipeline's device (the GPU)
        instead of OpenCV on the CPU (see [`~latentsync.face.warp`]); within one grey level of the OpenCV frames."""
        self._warp_device_enabled = bool(enabled)

    def enable_hardware_decode(self, hwaccel: str | None = "cuda") -> None:
        """Decode input videos with ffmpeg's hardware decoder (``"cuda"``: NVDEC on NVIDIA GPUs; also ``"vaapi"``,
        ``"qsv"``, ``"videotoolbox"`` where ffmpeg has them), taking decoding off the CPU. The frames are those the
        CPU decoder gives; where the decoder cannot start (no such GPU or driver) the run decodes on the CPU, with
        one warning. ``None`` turns it off.

        Raises:
            ValueError: ``hwaccel`` is not a hardware decoder this ffmpeg knows.
        """
        if hwaccel is not None:
            check_hardware_codec(hwaccel, "decoder")
        self._hwaccel = hwaccel

    def enable_hardware_encode(self, encoder: str | None = "h264_nvenc") -> None:
        """Encode output videos with a GPU's H.264 encoder (``"h264_nvenc"``: NVENC on NVIDIA GPUs) instead of libx264
        on the CPU, at about the same constant quality (``crf``). Where the encoder cannot start (no such GPU or
        driver) the run encodes with libx264, with one warning. ``None`` turns it off.

        Raises:
            ValueError: ``encoder`` is not a GPU encoder this ffmpeg has and this package knows.
        """
        if encoder is not None:
            check_hardware_codec(encoder, "encoder")
        self._video_encoder = encoder

    def enable_vae_slicing(self) -> None:
        """Encode and decode the frames of a window one at a time (lower peak memory; the same frames up to float
        rounding of the smaller convolution batches: at most one grey level)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode and decode faces larger than the VAE's tile in overlapping tiles, blended at the seams. The tile is
        the VAE's ``sample_size``: 256 px for ``stabilityai/sd-vae-ft-mse``, so a 256 px face (LatentSync 1.5) is
        never tiled (this saves nothing; it is logged), and a 512 px face (1.6) is done as four overlapping tiles
        whose seams cross the middle of the face (less peak memory; the output changes slightly along the seams).
        [`enable_vae_slicing`] saves memory without changing the output."""
        self.vae.enable_tiling()
        tile = self.vae.tile_sample_min_size
        tile = tile[0] if isinstance(tile, (list, tuple)) else tile
        if self.config.resolution <= tile:
            logger.info("VAE tiling has no effect here: the faces are %d px and the VAE's tile is %d px",
                        self.config.resolution, tile)

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """Use xFormers' memory-efficient attention in the U-Net and VAE (CUDA only; install with
        ``pip install "latentsync[xformers]"``). Without it attention runs through PyTorch's
        ``scaled_dot_product_attention``, which is as memory-efficient on current GPUs and PyTorch versions.

        Raises:
            ImportError: xformers is not installed.
            RuntimeError: no CUDA device (xformers has no CPU or MPS kernels).
        """
        if not is_xformers_available():
            raise ImportError('xformers is not installed: pip install "latentsync[xformers]" (CUDA GPUs only). '
                              "Attention already uses PyTorch's scaled_dot_product_attention without it.")
        if not torch.cuda.is_available():
            raise RuntimeError("xformers' memory-efficient attention needs a CUDA GPU; on this machine attention runs "
                               "through PyTorch's scaled_dot_product_attention (the default)")
        super().enable_xformers_memory_efficient_attention(attention_op)

    # ------------------------------------------------------------------ state of a call (diffusers' names)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """Denoising steps per window of the call in progress."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in ``callback_on_step_end``) to stop the call early."""
        return getattr(self, "_interrupt", False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ steps
    def check_inputs(
        self,
        video: Any,
        audio: Any,
        output_path: str | os.PathLike | None,
        num_inference_steps: int,
        guidance_scale: float,
        num_frames: int,
        face_index: int | None = None,
        landmark_smoothing: float = 1.5,
        audio_window_mode: str = "official",
        crf: int = 18,
        deep_cache_interval: int = 0,
        deep_cache_branch: int = 0,
        output_type: str | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        face: str | int | FaceTrack | None = None,
        face_box: Sequence[float] | None = None,
        face_box_frame: int = 0,
        mix_audio: Any = None,
        windows_per_batch: int | None = None,
        overwrite: bool = True,
        output_fps: float | str = VIDEO_FPS,
        avatar: Any = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        audio_track: int | None = None,
    ) -> CheckedInputs:
        """Check every argument of a call before any work is done: the call's arguments and files through
        [`latentsync.inputs.check_run_inputs`] (the same checks the command line and the app make before loading a
        model), then what depends on this pipeline's models.

        Raises:
            InvalidVideoError / InvalidAudioError: an input file is missing, empty, unreadable, without the right
                stream, or the audio is silent.
            InvalidOutputError: the output path is an input file, a folder, an existing file while ``overwrite`` is
                False, of an unsupported format, or in a missing or read-only folder.
            LatentSyncInputError: any other argument is out of range or of the wrong type (the message names it), or
                the pipeline's face resolution does not suit its VAE and U-Net.
        """
        _check_argument_types(video, output_path, latents, generator, callback_on_step_end,
                              callback_on_step_end_tensor_inputs)
        _check_generator_device(generator, self._execution_device)
        max_frames = self.unet.config.motion_max_seq_length if self.unet.has_motion_modules else None
        checked = check_run_inputs(
            video, audio, output_path, overwrite=overwrite, mix_audio=mix_audio, face=face, face_box=face_box,
            face_box_frame=face_box_frame, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            num_frames=num_frames, max_num_frames=max_frames, face_index=face_index,
            landmark_smoothing=landmark_smoothing, crf=crf, deep_cache_interval=deep_cache_interval,
            output_type=output_type, windows_per_batch=windows_per_batch, output_fps=output_fps, avatar=avatar,
            audio_track=audio_track,
        )
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        if self.config.resolution % multiple:
            raise LatentSyncInputError(f"the pipeline's resolution {self.config.resolution} is not a multiple of "
                                       f"{multiple}, which this model's VAE and U-Net need (pass resolution= when "
                                       "loading it)")
        if deep_cache_interval:
            check_int("deep_cache_branch", deep_cache_branch, 0, UNetFeatureCache.max_branch(self.unet))
        if audio_window_mode not in AUDIO_WINDOW_MODES:
            raise LatentSyncInputError(f"audio_window_mode must be one of {', '.join(AUDIO_WINDOW_MODES)}, "
                                       f"got {audio_window_mode!r}")
        if latents is not None and tuple(latents.shape) != self._noise_shape():
            raise LatentSyncInputError(f"latents must have shape {self._noise_shape()} (one noise map shared by all "
                                       f"frames), got {tuple(latents.shape)}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise LatentSyncInputError(f"callback_on_step_end_tensor_inputs {unknown} are not among "
                                       f"{self._callback_tensor_inputs}")
        return checked

    @torch.no_grad()
    def encode_audio(
        self,
        audio: np.ndarray,
        window_mode: AudioWindowMode = "official",
        stream: bool = False,
        timer: StageTimer | None = None,
    ) -> torch.Tensor | StreamedAudioFeatures:
        """Whisper token features ``(tokens, states, d_model)`` for 16 kHz mono audio; with ``stream`` in the
        ``"official"`` mode, computed one 30 s window at a time as they are read (bounded memory)."""
        return encode_audio_features(audio, self.feature_extractor, self.audio_encoder, window_mode, stream, timer)

    def detect_faces(self, video: str | os.PathLike | np.ndarray | Sequence[np.ndarray | PIL.Image.Image]
                     ) -> FaceTracks:
        """Every face of ``video`` followed through it: the tracks (frames, boxes ``(x, y, w, h)``, thumbnail) and
        the shots, as the lip sync sees them, so that ``face_index`` or an ``audio`` mapping can name a track.

        The video is read once at 25 fps (frame numbers count at that rate). See
        [`latentsync.face.tracking`] for how faces are followed through crossings, gaps and scene cuts.
        """
        source = self._open_video(video, VIDEO_FPS)
        return track_faces(source, source.label, self._progress, source.expected_frames)

    def select_faces(
        self,
        tracks: FaceTracks,
        source: FrameSource,
        face: str | int | FaceTrack | None = None,
        face_index: int | None = None,
        face_box: Sequence[float] | None = None,
        face_box_frame: int = 0,
        voice_tracks: Sequence[int | FaceTrack] | None = None,
        sound_track: Track = "speech",
    ) -> FaceSelection:
        """Which tracks to lip-sync, grouped by voice (see [`latentsync.face.selection`]).

        For ``face="speaking"`` every track is scored against the video's own soundtrack (its audio track
        ``sound_track``, as [`~latentsync.media.audio.load_audio`] takes it; by default the one with the speech): by
        the pipeline's ``syncnet`` when it has one (one more pass over ``source``), else by lip motion against
        loudness. A video without a soundtrack (or with a silent one) falls back to the largest face of each shot,
        with a warning.
        """
        return choose_faces(tracks, source, face, face_index, face_box, face_box_frame, voice_tracks,
                            syncnet=getattr(self, "syncnet", None), progress=self._progress, sound_track=sound_track)

    @staticmethod
    def _frames_to_analyze(source: FrameSource, num_output_frames: int, landmark_smoothing: float, face: Any,
                           face_index: int | None, face_box: Sequence[float] | None,
                           voice_tracks: Sequence[Any] | None) -> int | None:
        """How many frames the first pass reads; None: the whole video.

        A video longer than the output is followed only up to the output's last frame plus the reach of the landmark
        smoothing: the tracker only looks back, so the frames the output shows get the same tracks and alignment as
        from a pass over the whole video (except in a short gap of a track that the pass ends in, which is not
        filled: at most [`~latentsync.face.tracking.MAX_FILLED_GAP`] frames at the output's end), and the largest
        face is chosen among the frames that are shown. Track
        numbers, face boxes, a voice per track and the speaking-face score refer to the whole video, so with those
        it is read to the end, as is a video kept on its own timeline (its frame count is checked against its
        timestamps).
        """
        if (face not in (None, "largest") or face_index is not None or face_box is not None
                or voice_tracks is not None or source.timestamps is not None):
            return None
        needed = num_output_frames + smoothing_radius(landmark_smoothing)
        return needed if needed < source.expected_frames else None

    def _check_timeline_inputs(self, video: Any, audio: Any, output_fps: Any, avatar: Any) -> Avatar | None:
        """Check that there is a video or a prepared ``avatar`` (loaded here, and checked against this pipeline's
        models), and that ``output_fps`` suits a video (the arguments that an avatar cannot honour are refused by
        [`check_inputs`]).

        Raises:
            LatentSyncInputError: the message names the argument.
        """
        if audio is None:
            raise LatentSyncInputError("audio is required: the speech to lip-sync to")
        if avatar is None:
            if video is None:
                raise LatentSyncInputError("give a video (or a prepared avatar)")
            if output_fps == "input" and not isinstance(video, (str, os.PathLike)):
                raise LatentSyncInputError('output_fps="input" keeps the timestamps of a video file; frames in '
                                           "memory have none: give their frame rate as output_fps")
            return None
        # (a video as well, face arguments, a voice per face and another output_fps: refused by check_inputs)
        avatar = avatar if isinstance(avatar, Avatar) else Avatar.load(avatar)
        avatar.check_compatible(self.config.resolution, self.vae)
        return avatar

    def _open_video(self, video: Any, output_fps: float | str) -> FrameSource:
        """The video as re-readable frames: every stored frame with its timestamp for ``"input"``, else resampled
        to ``output_fps`` (decoded on the GPU after [`enable_hardware_decode`])."""
        hwaccel = getattr(self, "_hwaccel", None)
        return open_timed_frames(video, hwaccel) if output_fps == "input" else open_frames(video, output_fps, hwaccel)

    @staticmethod
    def _output_timeline(source: FrameSource, output_fps: float | str, num_samples: int
                         ) -> tuple[float, np.ndarray | None]:
        """The output's frame rate and the time (seconds) of every output frame, which covers ``num_samples`` of
        audio. None for the 25 fps timeline (frame ``i`` at ``i / 25``, the official arithmetic). With
        ``"input"``: the video's own timestamps (looping forward and backward with each frame's own duration when
        the audio is longer), the rate being the typical one (for display)."""
        if output_fps == "input":
            _, times = output_timeline(source.timestamps, num_samples / SAMPLE_RATE, _looping_order)
            gaps = np.diff(source.timestamps)
            return (1.0 / float(np.median(gaps)) if len(gaps) else float(VIDEO_FPS)), times
        if output_fps == VIDEO_FPS:
            return float(VIDEO_FPS), None
        return float(output_fps), np.arange(num_video_frames(num_samples, fps=output_fps)) / float(output_fps)

    # ------------------------------------------------------------------ device and dtypes, looked up once per call
    # diffusers finds the execution device and a model's dtype by walking every module (6.5 ms and 2.5 ms for the
    # full-size U-Net on a CPU); a call needs them several times per window, and the U-Net's forward once per step,
    # so a call pins them (the U-Net's dtype on the U-Net itself) while it runs.
    @contextlib.contextmanager
    def _pinned_placement(self) -> Iterator[None]:
        """Within it, the execution device and the U-Net's and VAE's dtypes are those looked up on entry. Nested, it
        keeps the outer pin: the device and dtypes only change between calls.

        It also makes calls on one pipeline from several threads take turns (a call, an avatar's preparation, a live
        window): they share the scheduler's timesteps, the interrupt flag and the U-Net's caches, so a second thread
        waits for the first instead of changing the steps under it."""
        with _call_lock(self):
            if self.__dict__.get("_placement_pin"):
                yield
                return
            with self._pin_placement():
                yield

    @contextlib.contextmanager
    def _pin_placement(self) -> Iterator[None]:
        """The pin of [`_pinned_placement`], entered by the outermost one."""
        with contextlib.ExitStack() as stack:
            pin_unet = getattr(self.unet, "pinned_dtype", None)  # the U-Net's own forward asks for its dtype per step
            unet_dtype = stack.enter_context(pin_unet()) if pin_unet else self.unet.dtype
            self.__dict__["_placement_pin"] = (super()._execution_device, unet_dtype, self.vae.dtype)
            try:
                yield
            finally:
                self.__dict__.pop("_placement_pin", None)

    @property
    def _execution_device(self) -> torch.device:
        pinned = self.__dict__.get("_placement_pin")
        return pinned[0] if pinned else super()._execution_device

    @property
    def _unet_dtype(self) -> torch.dtype:
        pinned = self.__dict__.get("_placement_pin")
        return pinned[1] if pinned else self.unet.dtype

    @property
    def _vae_dtype(self) -> torch.dtype:
        pinned = self.__dict__.get("_placement_pin")
        return pinned[2] if pinned else self.vae.dtype

    def _noise_shape(self) -> tuple[int, ...]:
        size = self.config.resolution // self.vae_scale_factor
        return (1, self.unet.config.out_channels, 1, size, size)

    @torch.no_grad()
    def prepare_latents(
        self,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The initial noise: one map ``(1, C, 1, h, w)`` shared by every frame of the video (as the official code),
        drawn from ``generator`` unless the caller gives ``latents``. [`denoise`] scales it by the scheduler's
        ``init_noise_sigma``."""
        if latents is None:
            return randn_tensor(self._noise_shape(), generator=generator, device=device, dtype=dtype)
        return latents.to(device=device, dtype=dtype)

    def _vae_encode(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self._sample_posterior(self._vae_posterior(pixels), generator)

    def _vae_posterior(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's posterior of ``pixels``: mean and log-variance ``(N, 2 * C, h, w)``."""
        # the execution device, not vae.device: under CPU offload the VAE's weights are elsewhere until it runs
        return self.vae.encode(pixels.to(self._execution_device, self._vae_dtype)).latent_dist.parameters

    def _sample_posterior(self, posterior: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents drawn from a VAE posterior (as ``latent_dist.sample``, the same random numbers)."""
        dist = DiagonalGaussianDistribution(posterior.to(self._execution_device, self._vae_dtype))
        return scale_latents(dist.sample(generator=generator), self.vae)

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = unscale_latents(latents, self.vae)
        dtype = self._vae_dtype
        sequential_offload = any(p.device.type == "meta" for p in self.vae.parameters())
        if dtype == torch.float16 and self.vae.config.force_upcast and not sequential_offload:
            # fp16 SD-VAE decoding overflows to NaN (black frames, notably on Apple MPS): decode in fp32
            self.vae.to(torch.float32)
            out = self.vae.decode(latents.float()).sample
            self.vae.to(dtype)
            return out
        return self.vae.decode(latents.to(dtype)).sample

    def _encode_masked_and_reference(
        self,
        pixels: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None,
        source_indices: Sequence[int] | None,
        latent_cache: LatentCache | None,
        avatar: Avatar | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference and masked-face latents ``(f, 4, h, w)``, taken from ``latent_cache`` where present.

        The VAE posterior samples are drawn in the official order (masked faces first, then the reference faces),
        so that a seeded run draws the same random numbers as the official code. With an ``avatar`` the posteriors
        are its stored ones (no VAE encoder), sampled in the same order and batch shapes."""

        def encode(rows: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
            if avatar is not None:
                keys = [int(source_indices[k]) for k in (range(len(source_indices)) if rows is None else rows)]
                masked_posterior, ref_posterior = avatar.posteriors(keys)
                masked = self._sample_posterior(masked_posterior, generator)
                return self._sample_posterior(ref_posterior, generator), masked
            sel = pixels if rows is None else pixels[rows]
            masked = self._vae_encode(sel * mask, generator)
            return self._vae_encode(sel, generator), masked

        if latent_cache is None or source_indices is None:
            return encode(None)
        keys = [int(j) for j in source_indices]
        first = {key: k for k, key in reversed(list(enumerate(keys)))}  # a window can show a frame twice
        missing = sorted(k for key, k in first.items() if latent_cache.get(key) is None)
        new = {}
        if missing:
            ref, masked = encode(missing)
            latent_cache.encoded += len(missing)
            for n, k in enumerate(missing):
                new[keys[k]] = (ref[n], masked[n])
                latent_cache.put(keys[k], ref[n], masked[n])
        device = self._execution_device
        pairs = [new[key] if key in new else latent_cache.get(key) for key in keys]
        for key in keys:
            latent_cache.release(key)
        ref = torch.stack([r.to(device) for r, _ in pairs])
        masked = torch.stack([m.to(device) for _, m in pairs])
        return ref, masked

    @torch.no_grad()
    def prepare_condition_latents(
        self,
        faces: np.ndarray,
        generator: torch.Generator | None = None,
        source_indices: Sequence[int] | None = None,
        latent_cache: LatentCache | None = None,
        avatar: Avatar | None = None,
    ) -> torch.Tensor:
        """The U-Net's conditioning channels ``(1, 9, f, h, w)`` for aligned faces ``(f, R, R, 3)`` uint8: the mouth
        mask (1), the VAE latents of the faces with the mouth masked out (4) and of the whole faces (4).

        With a ``latent_cache`` and ``source_indices`` (the source frame of each face), faces seen before in a
        looping video reuse their latents instead of being encoded again. With an ``avatar`` (and
        ``source_indices``) the latents are drawn from its stored VAE posteriors instead of encoding the faces.
        """
        res = self.config.resolution
        pixels = frames_to_pixels(faces)
        mask = _pixel_mask(res)
        ref_latents, masked_latents = self._encode_masked_and_reference(pixels, mask, generator, source_indices,
                                                                        latent_cache, avatar)
        f, (h, w) = faces.shape[0], ref_latents.shape[-2:]
        mask_latent = latent_mouth_mask(res, (h, w)).expand(f, 1, h, w)
        channels = [mask_latent, masked_latents, ref_latents]  # each (f, c, h, w) -> (1, c, f, h, w)
        return torch.cat([x.permute(1, 0, 2, 3).unsqueeze(0).to(self._execution_device, self._unet_dtype)
                          for x in channels], dim=1)

    def _guided_inputs(self, condition_latents: torch.Tensor, audio_embeds: torch.Tensor, guidance_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning and audio of one U-Net pass; with guidance, the unconditional half (zero audio) first."""
        context = audio_embeds.to(device=self._execution_device, dtype=self._unet_dtype)
        if guidance_scale <= 1.0:
            return condition_latents, context
        return torch.cat([condition_latents, condition_latents]), torch.cat([torch.zeros_like(context), context])

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        condition_latents: torch.Tensor,
        audio_embeds: torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        deep_cache: UNetFeatureCache | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise one window: ``latents`` (the shared noise map ``(1, C, 1, h, w)``, repeated over the window's
        frames) under ``condition_latents`` ``(1, 9, f, h, w)`` and the per-frame audio contexts ``audio_embeds``
        ``(f, tokens, d)``. Returns the final latents ``(1, C, f, h, w)``.

        Several windows at once: ``condition_latents`` ``(B, 9, F, h, w)``, ``audio_embeds`` ``(B * F, tokens, d)``
        and ``frame_mask`` ``(B, F)`` for windows padded to ``F`` frames (see [`~latentsync.window_batch`]); the
        result ``(B, C, F, h, w)`` equals the windows denoised one by one, within float rounding, for deterministic
        samplers (DDIM, DPM-Solver++, UniPC).

        ``callback_on_step_end(pipe, step, timestep, callback_kwargs)`` runs after every step (``step`` counts from 0
        in every window) with the tensors named in ``callback_on_step_end_tensor_inputs``; the dict it returns may
        replace them. Setting ``pipe._interrupt = True`` skips the remaining steps.
        """
        device, dtype = self._execution_device, self._unet_dtype
        cond, context = self._guided_inputs(condition_latents, audio_embeds, guidance_scale)
        batch, frames = condition_latents.shape[0], condition_latents.shape[2]
        latents = latents.to(device=device, dtype=dtype).expand(batch, -1, frames, -1, -1).clone()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        # schedulers differ in what step() accepts (UniPC takes no generator)
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if takes_generator else {}
        if deep_cache is not None:
            deep_cache.reset()
        compiled = getattr(self, "_compiled_step", None)
        mask_cfg = None if frame_mask is None else torch.cat([frame_mask] * 2) if guidance_scale > 1.0 else frame_mask
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, t in enumerate(self.scheduler.timesteps):
            if self.interrupt:
                continue
            model_in = torch.cat([latents] * 2) if guidance_scale > 1.0 else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            model_in = torch.cat([model_in, cond], dim=1)
            if deep_cache is not None:
                noise_pred = deep_cache(model_in, t, context, step=i, frame_mask=mask_cfg)
            elif compiled is not None:
                noise_pred = compiled(model_in, t, context, mask_cfg)
            elif mask_cfg is not None:
                noise_pred = self.unet(model_in, t, encoder_hidden_states=context, frame_mask=mask_cfg).sample
            else:
                noise_pred = self.unet(model_in, t, encoder_hidden_states=context).sample
            if guidance_scale > 1.0:
                uncond, audio_cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (audio_cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "condition_latents": condition_latents, "audio_embeds": audio_embeds}
                outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                if not isinstance(outputs, dict):
                    raise LatentSyncInputError("callback_on_step_end must return its callback_kwargs dict (possibly "
                                               f"with tensors replaced), got {type(outputs).__name__}")
                latents = outputs.pop("latents", latents)
                if "condition_latents" in outputs or "audio_embeds" in outputs:
                    condition_latents = outputs.pop("condition_latents", condition_latents)
                    audio_embeds = outputs.pop("audio_embeds", audio_embeds)
                    cond, context = self._guided_inputs(condition_latents, audio_embeds, guidance_scale)
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Faces ``(f, R, R, 3)`` uint8 from a window's final latents ``(1, C, f, h, w)``."""
        return pixels_to_frames(self._vae_decode(latents[0].permute(1, 0, 2, 3)))

    def windows_per_batch(self, requested: int | None, num_frames: int = 16) -> int:
        """Windows per U-Net call: ``requested``, or (None) on CUDA as many as fit in 80 % of the free GPU memory
        (measured with one probe step of one window, at most [`MAX_WINDOWS_PER_BATCH`]), else 1."""
        if requested is not None:
            return requested
        device = self._execution_device
        if device.type != "cuda":
            return 1
        size = self.config.resolution // self.vae_scale_factor
        batch = 2 if getattr(self, "_guidance_scale", 1.5) > 1.0 else 1  # the CFG pair, as in a call
        sample = torch.zeros(batch, self.unet.config.in_channels, num_frames, size, size, device=device,
                             dtype=self._unet_dtype)
        context = torch.zeros(batch * num_frames, 50, self.unet.config.cross_attention_dim, device=device,
                              dtype=self._unet_dtype)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            self.unet(sample, torch.tensor(999, device=device), encoder_hidden_states=context)
        per_window = torch.cuda.max_memory_allocated(device) - before
        free, _ = torch.cuda.mem_get_info(device)
        chosen = windows_that_fit(free, per_window, MAX_WINDOWS_PER_BATCH)
        logger.info("%d windows per U-Net call (%.2f GiB per window, %.1f GiB free)", chosen, per_window / 2**30,
                    free / 2**30)
        return chosen

    def _generate_windows(self, stream: VideoStream, num_frames: int, windows_per_batch: int,
                          latents: torch.Tensor, audio_features: Sequence[Any], latent_caches: Sequence[Any],
                          deep_cache: UNetFeatureCache | None, num_inference_steps: int, guidance_scale: float,
                          generator: torch.Generator | None, callback_on_step_end: Callable[..., Any] | None,
                          callback_on_step_end_tensor_inputs: Sequence[str], timer: StageTimer,
                          avatar: Avatar | None = None, times: np.ndarray | None = None) -> None:
        """The second pass: every window's faces (one group per voice) conditioned in order, denoised
        ``windows_per_batch`` groups per U-Net call, decoded, and the windows written in order once all their
        groups are done. With a compiled denoiser every call has the same shape (windows padded to
        ``num_frames``, the last call padded with copies). With an ``avatar`` the faces' latents are drawn from its
        stored posteriors; with ``times`` (seconds per output frame) each frame's audio context is taken at its
        time instead of on the 25 fps timeline."""
        fixed_shapes = getattr(self, "_compiled_step", None) is not None
        stream.buffer_windows(windows_per_batch + 1)  # a call's windows are written at once: none should wait
        jobs: list[tuple[FrameWindow, int, torch.Tensor, torch.Tensor]] = []  # window, group number, inputs
        waiting: list[tuple[FrameWindow, list]] = []  # windows not yet written, with their new faces so far

        def run_jobs(count: int) -> None:
            batch_jobs, jobs[:] = jobs[:count], jobs[count:]
            if count == 1 and not fixed_shapes:  # exactly the unbatched computation
                batch = WindowBatch(batch_jobs[0][2], batch_jobs[0][3], None, [batch_jobs[0][2].shape[2]])
            else:
                batch = stack_windows([j[2] for j in batch_jobs], [j[3] for j in batch_jobs],
                                      num_frames if fixed_shapes else None,
                                      windows_per_batch if fixed_shapes else None, always_mask=fixed_shapes)
            if batch.frame_mask is not None and not self.unet.config.frame_pooled_norm:
                if self.unet.has_motion_modules:
                    raise ValueError("this U-Net cannot denoise padded windows (its temporal layers pool frames "
                                     "without a frame mask): use windows_per_batch=1 and no compiled denoiser")
                batch.frame_mask = None  # its frames never mix: the padding cannot reach the real frames
            with timer("denoise"):
                out = self.denoise(latents, batch.condition, batch.audio, num_inference_steps, guidance_scale,
                                   generator, deep_cache, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                   frame_mask=batch.frame_mask)
            with timer("vae_decode"):
                parts = batch.split(out)
                faces = self.decode_latents(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
            offsets = np.cumsum([0] + batch.lengths)
            for (window, group, _, _), a, b in zip(batch_jobs, offsets[:-1], offsets[1:]):
                next(new for w, new in waiting if w is window)[group] = faces[a:b]

        def write_ready() -> None:
            while waiting and (not waiting[0][0].groups or all(f is not None for f in waiting[0][1])):
                window, new_faces = waiting.pop(0)
                stream.write(window, new_faces)

        num_windows = -(-stream.num_output_frames // num_frames)
        for window in self._progress(stream.windows(num_frames), "Lip sync", num_windows):
            waiting.append((window, [None] * len(window.groups)))
            for number, group in enumerate(window.groups):
                with timer("vae_encode"):
                    condition = self.prepare_condition_latents(group.faces, generator, group.sources,
                                                               latent_caches[group.voice], avatar)
                if times is None:  # the 25 fps timeline
                    audio_embeds = frame_audio_contexts(audio_features[group.voice], group.frame_indices)
                else:  # each frame's context at its own time
                    audio_embeds = audio_contexts_at(audio_features[group.voice], times[group.frame_indices])
                jobs.append((window, number, condition, audio_embeds))
                while len(jobs) >= windows_per_batch and not self.interrupt:
                    run_jobs(windows_per_batch)
            write_ready()
            if self.interrupt:
                break
        if jobs and not self.interrupt:
            run_jobs(len(jobs))
        write_ready()

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    @_placement_pinned
    def __call__(
        self,
        video: str | os.PathLike | np.ndarray | Sequence[np.ndarray | PIL.Image.Image] | None = None,
        audio: str | os.PathLike | np.ndarray | torch.Tensor | Mapping[int | FaceTrack, Any] | None = None,
        output_path: str | os.PathLike | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_frames: int = 16,
        face_index: int | None = None,
        face: str | int | FaceTrack | None = None,
        face_box: Sequence[float] | None = None,
        face_box_frame: int = 0,
        mix_audio: str | os.PathLike | np.ndarray | torch.Tensor | None = None,
        landmark_smoothing: float = 1.5,
        audio_window_mode: AudioWindowMode = "official",
        overlap_stages: bool = True,
        return_frames: bool = False,
        crf: int = 18,
        deep_cache_interval: int = 0,
        deep_cache_branch: int = 0,
        cache_latents: bool | None = None,
        output_type: str | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        overwrite: bool = True,
        windows_per_batch: int | None = None,
        output_fps: float | str = VIDEO_FPS,
        avatar: str | os.PathLike | Avatar | None = None,
        audio_track: int | None = None,
    ) -> LatentSyncPipelineOutput | tuple:
        r"""Lip-sync ``video`` to ``audio``.

        The video is read twice as a stream (face analysis, then generation) and written as it is produced, so
        memory does not grow with its length; only a video that must loop (audio longer than video) is cached,
        on disk.

        Args:
            video: path of the talking-face video (any format and frame rate ffmpeg reads), or its frames in memory
                at 25 fps (an RGB array ``(T, H, W, 3)``, a tensor ``(T, 3, H, W)``, a list of frames or PIL
                images, or one PIL image; uint8 0-255 or float [0, 1] / [-1, 1]: see
                [`~latentsync.media.video.open_frames`]).
            audio: path of the speech (any audio or video file with an audio stream), or its samples at 16 kHz
                (float in [-1, 1] or integer PCM, mono or channels: see [`~latentsync.media.audio.as_samples`]);
                it replaces the video's audio. A voice per face: a mapping from face track (its number, as
                [`detect_faces`] lists them, or the [`~latentsync.face.FaceTrack`]) to that face's speech; each face
                is lip-synced to its own speech, and the output's sound is their mix (or ``mix_audio``).
            output_path: where to write the result (``.mp4``, ``.mov`` or ``.mkv``); None returns frames only.
            num_inference_steps: denoising steps per 16-frame window.
            guidance_scale: classifier-free guidance on the audio (zero audio as unconditional); 1 disables it.
            generator: torch generator for the initial noise and VAE sampling (seed it for reproducible output); a
                list of one generator is the same (a call makes one video).
            latents: the initial noise ``(1, 4, 1, R/8, R/8)`` (one map shared by every frame) instead of drawing it.
            num_frames: frames denoised together (16 as in training).
            face_index: lip-sync face track ``k`` (tracks are numbered by first frame, then from left to right;
                [`detect_faces`] lists them); frames outside that track pass through unchanged.
            face: ``"largest"`` (default: in each shot, the face that fills the most picture), ``"speaking"`` (in
                each shot, the face whose mouth follows the video's own soundtrack; see ``out.faces``), or a track
                (number or [`~latentsync.face.FaceTrack`], as ``face_index``).
            face_box: ``(x, y, width, height)`` in pixels: lip-sync the face track whose box overlaps it most on
                frame ``face_box_frame`` (25 fps frame number).
            face_box_frame: see ``face_box``.
            mix_audio: the sound of the output (path or 16 kHz samples) instead of ``audio`` (or the mix of the
                voices); the output lasts as long as it, and the speech that drives the lips is cut or padded to it.
            landmark_smoothing: temporal Gaussian sigma (frames) applied to face landmarks; 0 disables.
            audio_window_mode: ``"official"`` (independent 30 s Whisper windows, exact parity) or ``"overlap"``
                (overlapping windows, no discontinuity every 30 s on long audio).
            overlap_stages: decode/align and paste/encode in background threads while the model denoises
                (same output, faster).
            return_frames: also return the output frames (as ``output_type="np"``) when a file is written.
            crf: x264 quality of the written video (lower is better).
            deep_cache_interval: DeepCache feature reuse: run the whole U-Net every ``interval`` steps and only its
                shallow branch in between (0 = off; 3 as in DeepCache is about 2x fewer U-Net FLOPs at full size,
                at some quality cost, see the README's benchmarks). 1 gives the same output as 0.
            deep_cache_branch: depth of the recomputed shallow branch (0 = shallowest, fastest).
            cache_latents: VAE-encode each source frame once and reuse its latents when the video loops (default:
                on when the output is longer than the video). The VAE posterior sample is then drawn once per
                source frame instead of once per output frame, so the output differs slightly from
                ``cache_latents=False`` with the same seed.
            output_type: the form of ``frames`` in the output: ``"np"`` (RGB uint8 array ``(N, H, W, 3)``),
                ``"pil"`` (list of PIL images), ``"pt"`` (float tensor ``(N, 3, H, W)`` in [0, 1]) or ``"file"``
                (no frames in memory, only the written file). None (default): ``"np"`` without ``output_path``
                (or with ``return_frames``), else ``"file"``, so that long videos are never held in memory.
            return_dict: return a [`LatentSyncPipelineOutput`]; False returns the tuple ``(frames, path)``.
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs) -> dict`` run after every
                denoising step of every window; the returned dict may replace the tensors. A diffusers
                ``PipelineCallback`` or ``MultiPipelineCallbacks`` gets the tensors its ``tensor_inputs`` name. Setting
                ``pipe._interrupt = True`` stops the call: the current window is decoded as it is, no further window
                is generated, and the output holds the frames made so far.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``: any of ``"latents"``,
                ``"condition_latents"`` and ``"audio_embeds"``.
            overwrite: replace an existing file at ``output_path`` (the default, as diffusers' ``export_to_video``
                and ``save_pretrained`` do); False refuses it. The output may never be (or link to) the video or the
                audio file: that is refused whatever this says.
            windows_per_batch: windows (of one voice's faces) denoised together in one U-Net call (see
                [`windows_per_batch`]); None chooses: as many as fit in free GPU memory on CUDA, 1 elsewhere. The
                frames do not depend on it (within float rounding, with the deterministic samplers); callbacks then
                see the latents of all the windows of a call, and an interrupt stops after that call.
            output_fps: the output's frame rate: 25 (default, the model's rate: the video is resampled by time), any
                other rate (resampled to it), or ``"input"``: every frame of the video file as it is stored, each
                written at its own timestamp (variable frame rates included) with the audio context taken at that
                time. Frames in memory are taken to be at ``output_fps`` (``"input"`` needs a file).
            avatar: a prepared avatar (folder from [`prepare_avatar`], or the [`~latentsync.avatar.Avatar`]) instead
                of ``video``: no face analysis and no VAE encoder, the same frames as the call on the video.
            audio_track: which audio track of the ``audio`` file is the speech, numbered from 1 as the log, players
                and OBS number them (ffmpeg's ``0:a:1`` is track 2); it drives the lips and is the one copied into
                the output (unless ``mix_audio``). None (default): the track with the speech
                ([`~latentsync.media.audio.speech_track`]: the first, unless another is clearly louder in the speech
                band). With ``face="speaking"`` on a ``video`` that is the ``audio`` file, the faces are scored
                against this track too.

        Examples:

        Returns:
            [`LatentSyncPipelineOutput`], or the tuple ``(frames, path)`` when ``return_dict`` is False.
        """
        # 0. Check every argument before any work
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs  # as diffusers' pipelines do
        checked = self.check_inputs(
            video, audio, output_path, num_inference_steps, guidance_scale, num_frames, face_index, landmark_smoothing,
            audio_window_mode, crf, deep_cache_interval, deep_cache_branch, output_type, latents,
            callback_on_step_end_tensor_inputs, face, face_box, face_box_frame, mix_audio,
            windows_per_batch=windows_per_batch, overwrite=overwrite, output_fps=output_fps, avatar=avatar,
            generator=generator, callback_on_step_end=callback_on_step_end, audio_track=audio_track)
        if isinstance(generator, (list, tuple)):
            generator = generator[0]  # one video: a list of one generator is that generator
        avatar = self._check_timeline_inputs(video, audio, output_fps, avatar)
        if avatar is not None:
            output_fps = avatar.fps  # the timeline the avatar was prepared for
        if output_type is None:
            output_type = "np" if return_frames or output_path is None else "file"
        self._guidance_scale, self._interrupt, self._num_timesteps = guidance_scale, False, num_inference_steps
        timer, wall, device = StageTimer(), time.perf_counter(), self._execution_device
        compile_before = getattr(getattr(self, "_compiled_step", None), "compile_seconds", 0.0)

        # 1. Open the inputs: the video as re-readable frames (at output_fps, or as stored), the speech of each voice
        #    as 16 kHz samples, and the output's sound, which sets the length and the output's timeline
        source = avatar.frame_source() if avatar is not None else self._open_video(video, output_fps)
        voice_tracks = list(audio) if isinstance(audio, Mapping) else None
        speech = checked.speech_track  # (probed by the checks: a file's tracks are read once)
        if audio_track is not None:  # the automatic choice logs itself (speech_track)
            logger.info("%s: the speech is read from audio track %d, as chosen", os.fspath(audio), audio_track)
        voices, sound, sound_track, samples = _open_voices(audio, mix_audio, speech)
        fps, times = self._output_timeline(source, output_fps, len(samples))
        num_output_frames = len(times) if times is not None else num_video_frames(len(samples), fps=fps)

        # 2. Encode the speech of each voice (streamed one 30 s Whisper window at a time in the official mode)
        with timer("audio_features"):
            audio_features = [self.encode_audio(v, audio_window_mode, stream=True, timer=timer) for v in voices]

        aligner = TorchFaceAligner(self.config.resolution, device=device) \
            if getattr(self, "_warp_device_enabled", False) else None
        with VideoStream(source, num_output_frames, self.config.resolution, overlap_stages, timer,
                         self._progress, aligner) as stream:
            if avatar is None:
                # 3. First pass over the video: every face followed through it (tracks, shots); only as far as the
                #    output reaches when the face is chosen automatically
                tracks = stream.track_faces(self._frames_to_analyze(source, num_output_frames, landmark_smoothing,
                                                                    face, face_index, face_box, voice_tracks))
                _check_frame_count(source, tracks.num_frames)

                # 4. Which tracks to lip-sync, and with which voice; their alignment and the output order (looping
                #    if the video is too short)
                selection = self.select_faces(tracks, source, face, face_index, face_box, face_box_frame,
                                              voice_tracks, _video_track(video, audio, speech))
                stream.assign(selection.voices, landmark_smoothing)
            else:  # 3-4. A prepared avatar: the faces, their alignment and crops are known
                selection = FaceSelection([], [])
                stream.use_prepared(avatar.matrices, avatar.crop)

            # 5. The initial noise, drawn before any VAE sample (the official order of random draws)
            latents = self.prepare_latents(self._unet_dtype, device, generator, latents)

            # 6. Open the output, and the caches that save work when the video loops or steps repeat
            stream.open_output(output_path, sound, samples, crf, keep_frames=output_type != "file", fps=fps,
                               timestamps=times if output_fps == "input" else None,
                               encoder=getattr(self, "_video_encoder", None), track=sound_track)
            use_latent_cache = stream.loops if cache_latents is None else cache_latents
            latent_caches = [stream.latent_cache(v) if use_latent_cache else None for v in range(stream.num_voices)]
            deep_cache = UNetFeatureCache(self.unet, deep_cache_interval, deep_cache_branch) if deep_cache_interval \
                else None

            # 7. Second pass: per window and voice, condition on the faces; denoise ``windows_per_batch`` of them per
            #    U-Net call, decode; then paste the mouths back and write
            windows_per_batch = self.windows_per_batch(windows_per_batch, num_frames)
            self._generate_windows(stream, num_frames, windows_per_batch, latents, audio_features, latent_caches,
                                   deep_cache, num_inference_steps, guidance_scale, generator, callback_on_step_end,
                                   callback_on_step_end_tensor_inputs, timer, avatar, times)
            frames = stream.finish()
        if self.interrupt and output_path is not None and 0 < stream.frames_submitted < num_output_frames:
            # stopped early: the file's sound ends with its last frame instead of going on over a frozen picture
            end = times[stream.frames_submitted] if times is not None else stream.frames_submitted / fps
            _cut_sound_to_picture(os.fspath(output_path), float(end))

        # 8. Release offloaded models and return the frames in the requested form
        self.maybe_free_model_hooks()
        timings = {**timer.as_dict(), "total": time.perf_counter() - wall}
        compiled = getattr(self, "_compiled_step", None)
        if compiled is not None:  # the first call of each new shape compiled: its time is compilation, not denoising
            timings["compile"] = compiled.compile_seconds - compile_before
            timings["denoise"] = timings.get("denoise", 0.0) - timings["compile"]
        output = LatentSyncPipelineOutput(
            frames=self.postprocess_frames(frames, output_type), fps=float(fps),
            path=os.fspath(output_path) if output_path is not None else None, num_frames=stream.frames_submitted,
            frames_without_face=stream.frames_without_face, timings=timings, faces=selection.shots,
            timestamps=times[: stream.frames_submitted] if times is not None else None,
        )
        return output if return_dict else (output.frames, output.path)

    @staticmethod
    def postprocess_frames(frames: list[np.ndarray], output_type: str) -> np.ndarray | list | torch.Tensor | None:
        """Output frames (RGB uint8 ``(H, W, 3)`` arrays) in the form ``output_type`` names (see ``__call__``)."""
        if output_type == "file" or not frames:
            return None
        if output_type == "pil":
            return [PIL.Image.fromarray(frame) for frame in frames]
        stacked = np.stack(frames)
        if output_type == "pt":
            return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255.0
        return stacked

    # ------------------------------------------------------------------ avatars and live streams
    @torch.no_grad()
    @_placement_pinned
    def prepare_avatar(
        self,
        video: str | os.PathLike | np.ndarray | Sequence[np.ndarray | PIL.Image.Image],
        path: str | os.PathLike,
        output_fps: float | str = VIDEO_FPS,
        face: str | int | FaceTrack | None = None,
        face_index: int | None = None,
        face_box: Sequence[float] | None = None,
        face_box_frame: int = 0,
        landmark_smoothing: float = 1.5,
        num_frames: int = 16,
        overwrite: bool = True,
    ) -> Avatar:
        """Analyse a talking-face video once and save what does not depend on the speech in the folder ``path``:
        the chosen face's alignment on every frame, the aligned crops, and the VAE posteriors of the masked and
        whole faces (safetensors + JSON, with a copy of the video; see [`latentsync.avatar`]).

        ``pipe(avatar=path, audio=...)`` and [`stream`] then skip face analysis and the VAE encoder; with the same
        seed, face choice and ``output_fps`` they give exactly the frames of ``pipe(video=..., audio=...)``. The
        arguments are those of ``__call__``; ``path`` must be a new or empty folder or hold an earlier avatar, which
        is replaced when ``overwrite`` (never a folder with other files).

        Returns:
            the [`~latentsync.avatar.Avatar`] (also saved at ``path``).
        """
        check_output_fps(output_fps)
        check_face_arguments(face, face_index, face_box, face_box_frame)
        check_int("num_frames", num_frames, 1)
        check_avatar_destination(path, overwrite)
        if isinstance(video, (str, os.PathLike)):
            check_input_file(video, InvalidVideoError, "video")
        elif output_fps == "input":
            raise LatentSyncInputError('output_fps="input" keeps the timestamps of a video file; frames in memory '
                                       "have none: give their frame rate as output_fps")
        source = self._open_video(video, output_fps)
        mask = _pixel_mask(self.config.resolution)
        crops, masked, reference = [], [], []
        with VideoStream(source, source.expected_frames, self.config.resolution, progress=self._progress) as stream:
            tracks = stream.track_faces()
            _check_frame_count(source, tracks.num_frames)
            stream.num_output_frames = tracks.num_frames  # every frame once, in order
            selection = self.select_faces(tracks, source, face, face_index, face_box, face_box_frame)
            stream.assign(selection.voices[:1], landmark_smoothing)
            num_windows = -(-tracks.num_frames // num_frames)
            # the faces are encoded in the windows (and batch shapes) in which a call on the video encodes them
            for window in self._progress(stream.windows(num_frames), "Avatar", num_windows):
                for group in window.groups:
                    pixels = frames_to_pixels(group.faces)
                    masked.append(self._vae_posterior(pixels * mask).cpu())
                    reference.append(self._vae_posterior(pixels).cpu())
                    crops.append(group.faces)
            matrices, frame_shape = stream.matrices[0], stream.frame_shape
        in_memory = not isinstance(video, (str, os.PathLike))
        avatar = Avatar(
            resolution=self.config.resolution, fps=output_fps, num_frames=len(matrices),
            frame_shape=tuple(frame_shape), matrices=matrices, crops=np.concatenate(crops),
            masked_posteriors=torch.cat(masked), reference_posteriors=torch.cat(reference),
            timestamps=source.timestamps, time_base=source.time_base,
            frames=np.stack(list(source)) if in_memory else None, vae=vae_fingerprint(self.vae),
            label=os.path.basename(os.fspath(video)) if not in_memory else "frames in memory",
        )
        avatar.save(path, None if in_memory else video, overwrite=overwrite)
        logger.info("prepared avatar %s: %d frames, %d with a face", os.fspath(path), avatar.num_frames,
                    len(avatar.crops))
        return avatar

    def live_session(
        self,
        avatar: str | os.PathLike | Avatar | None = None,
        live_video: bool = False,
        fps: float = VIDEO_FPS,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_frames: int = 16,
    ) -> LiveSession:
        """A push-style live stream ([`~latentsync.live.LiveSession`]): ``session.push(samples)`` returns the frames
        that became ready, ``session.finish()`` the rest. The face is a prepared ``avatar`` or, with
        ``live_video``, frames given to ``session.push_frames`` (at ``fps``). See [`stream`]."""
        max_frames = self.unet.config.motion_max_seq_length if self.unet.has_motion_modules else None
        check_arguments(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, num_frames=num_frames,
                        max_num_frames=max_frames)
        check_output_fps(fps)
        if fps == "input":
            raise LatentSyncInputError("live video has no stored timestamps: give its frame rate as fps")
        if latents is not None and tuple(latents.shape) != self._noise_shape():
            raise LatentSyncInputError(f"latents must have shape {self._noise_shape()}, got {tuple(latents.shape)}")
        if avatar is not None and live_video:
            raise LatentSyncInputError("give either a prepared avatar or live video frames, not both")
        if avatar is not None and not isinstance(avatar, Avatar):
            avatar = Avatar.load(avatar)
        if avatar is not None:
            avatar.check_compatible(self.config.resolution, self.vae)
        return LiveSession(self, avatar, live_video, fps, num_inference_steps, guidance_scale, generator, latents,
                           num_frames)

    def stream(
        self,
        audio_chunks: Iterable[np.ndarray | torch.Tensor],
        avatar: str | os.PathLike | Avatar | None = None,
        frames: Iterable[np.ndarray] | None = None,
        fps: float = VIDEO_FPS,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        num_frames: int = 16,
    ) -> LiveStream:
        """Live lip sync: consume speech chunk by chunk and yield lip-synced frames window by window.

        Args:
            audio_chunks: an iterator (possibly endless) of mono 16 kHz float chunks of any length.
            avatar: a prepared avatar (folder or [`~latentsync.avatar.Avatar`], from [`prepare_avatar`]); it loops
                forward and backward for as long as the speech lasts.
            frames: instead of an avatar, an iterator of live RGB uint8 frames at ``fps`` (a camera): as many are
                read as the audio received covers; the face is found frame by frame (no smoothing, no look-ahead).
            fps: the frame rate of live video (an avatar keeps the timeline it was prepared for).
            num_inference_steps, guidance_scale, generator, latents, num_frames: as in ``__call__``.

        Yields:
            [`~latentsync.live.LiveFrame`] (``index``, ``time`` in seconds, ``image`` RGB uint8), in order. A window
            of frames comes as soon as the audio up to its end has arrived (latency: one window of audio plus its
            compute); memory does not grow with the stream's length. Each window is exactly what an offline call on
            the audio received so far generates for it (frames near the newest audio see it cut there; see
            [`latentsync.live`]), and the windows after the last chunk are exactly those of the offline call.
            The returned [`~latentsync.live.LiveStream`] also holds the figures measured so far (``.stats``: time
            to the first frame, window latency percentiles, late windows, speed against real time) and stops the
            stream early with ``.close()`` (or as a ``with`` block).
        """
        session = self.live_session(avatar, frames is not None, fps, num_inference_steps, guidance_scale,
                                    generator, latents, num_frames)
        return LiveStream(session, audio_chunks, frames)

    # ------------------------------------------------------------------ saving and sharing
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save all components (safetensors) and ``model_index.json`` as diffusers does, plus the loader file that lets
        plain diffusers load the folder (see [`latentsync.hub`]) and, unless one exists, a model card ``README.md``.

        ``push_to_hub=True`` also uploads the folder, as [`push_to_hub`] does, with diffusers' push keywords
        ``repo_id`` (default: the folder's name), ``commit_message``, ``private``, ``token`` and ``create_pr``, and
        ``base_model`` for the model card.

        Raises:
            LoraAdapterError: the U-Net holds LoRA adapters (``unload_lora_weights`` first, after ``fuse_lora`` to
                keep them merged): their layers would be saved in place of its weights, which then load as random.
        """
        check_no_lora_layers(self.unet, "save the pipeline")
        push = kwargs.pop("push_to_hub", False)
        push_options = {k: kwargs.pop(k) for k in ("commit_message", "private", "token", "create_pr", "base_model")
                        if k in kwargs}
        repo_id = kwargs.pop("repo_id", None)
        super().save_pretrained(save_directory, **kwargs)
        hub.write_loader(save_directory)
        card_path = os.path.join(save_directory, hub.CARD_NAME)
        if not os.path.exists(card_path):
            hub.pipeline_card(self, os.fspath(save_directory)).save(card_path)
        if push:
            self.push_folder_to_hub(save_directory, repo_id or os.path.basename(os.path.normpath(save_directory)),
                                    **push_options)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload LatentSync pipeline", private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, base_model: str | None = None,
                    **kwargs) -> str:
        """Save the pipeline (with the loader file and a model card naming ``repo_id`` and ``base_model``) and upload
        it to the Hub repo ``repo_id`` (created if needed) in one commit; returns the repo id. Other keywords go to
        [`save_pretrained`] (``safe_serialization``, ``variant``)."""
        with tempfile.TemporaryDirectory(prefix="latentsync-push-") as tmp:
            self.save_pretrained(tmp, **kwargs)
            return self.push_folder_to_hub(tmp, repo_id, commit_message, private, token, create_pr, base_model)

    def push_folder_to_hub(self, folder: str | os.PathLike, repo_id: str,
                           commit_message: str = "Upload LatentSync pipeline", private: bool | None = None,
                           token: str | None = None, create_pr: bool = False, base_model: str | None = None,
                           training: dict[str, Any] | None = None, datasets: Sequence[str] | None = None) -> str:
        """Upload a folder this pipeline was saved to, with a fresh model card naming ``repo_id``, the ``base_model``
        it derives from, and (for trained pipelines) its ``training`` settings and results and ``datasets``."""
        card = hub.pipeline_card(self, repo_id, base_model=base_model, datasets=datasets, training=training)
        return hub.push_folder(folder, repo_id, card=card, commit_message=commit_message, private=private,
                               token=token, create_pr=create_pr)

    def _progress(self, iterable: Any, desc: str, total: int | None = None) -> tqdm:
        """tqdm bar for one stage, honouring ``set_progress_bar_config``."""
        config = {"desc": desc, "total": total, **getattr(self, "_progress_bar_config", {})}
        return tqdm(iterable, **config)


def _open_voices(audio: Any, mix_audio: Any, track: Track = "speech"
                 ) -> tuple[list[np.ndarray], Any, Track, np.ndarray]:
    """The speech of each voice (16 kHz samples), the output's sound (a file to mux as it is, the [`VoiceMix`] to
    write, or None to write ``samples``) and which of its audio tracks to mux, and the output's sound as 16 kHz
    samples (its length is the output's).

    One ``audio``: one voice (its audio track ``track``), which is also the sound. A mapping: one voice per face and
    their mix as the sound (at the files' quality). ``mix_audio`` replaces the sound; the voices are then cut or
    padded to its length.
    """
    if isinstance(audio, Mapping):
        voices = []
        for key, speech in audio.items():
            samples = as_samples(speech)
            label = os.fspath(speech) if isinstance(speech, (str, os.PathLike)) else "audio samples"
            check_not_silent(samples, f"{label} (face {track_key(key)})")
            voices.append(samples)
        sound, samples = VoiceMix(tuple(audio.values())), mix_tracks(voices)
    else:
        samples = as_samples(audio, track)
        check_not_silent(samples, os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else "audio samples")
        voices, sound = [samples], audio
    sound_track = track
    if mix_audio is not None:
        sound, sound_track = (mix_audio if isinstance(mix_audio, (str, os.PathLike)) else None), "speech"
        samples = as_samples(mix_audio)
        check_not_silent(samples, os.fspath(mix_audio) if sound is not None else "mix_audio samples")
    voices = [v if len(v) >= len(samples) else fit_length(v, len(samples)) for v in voices]
    return voices, sound, sound_track, samples


def _video_track(video: Any, audio: Any, speech: Track) -> Track:
    """The audio track of ``video`` that ``face="speaking"`` listens to: the speech track chosen for ``audio`` when
    the video is that same file, else the video's own speech track."""
    if isinstance(video, (str, os.PathLike)) and isinstance(audio, (str, os.PathLike)) and same_file(video, audio):
        return speech
    return "speech"


def _cut_sound_to_picture(path: str, seconds: float) -> None:
    """Cut every stream of the written video ``path`` at ``seconds`` (the end of its picture), without re-encoding;
    the file is replaced atomically."""
    def remux(partial: str) -> None:
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", ffmpeg_path(path), "-map", "0",
                   "-t", f"{seconds:.6f}", "-c", "copy", partial]
        subprocess.run(command, check=True, capture_output=True)

    write_atomically(path, remux)


def _check_argument_types(video: Any, output_path: Any, latents: Any, generator: Any, callback_on_step_end: Any,
                          callback_on_step_end_tensor_inputs: Any) -> None:
    """[`LatentSyncInputError`] naming the first argument of a call whose type cannot be used (the values are
    checked by [`latentsync.inputs.check_run_inputs`])."""
    if video is not None and not isinstance(video, (str, os.PathLike, np.ndarray, torch.Tensor, list, tuple,
                                                    PIL.Image.Image)):
        raise LatentSyncInputError("video must be a file path, an RGB array (T, H, W, 3), a tensor (T, 3, H, W), a "
                                   "list of frames (arrays, tensors or PIL images) or one PIL image, got "
                                   f"{type(video).__name__}")
    if output_path is not None and not isinstance(output_path, (str, os.PathLike)):
        raise LatentSyncInputError(f"output_path must be a file path or None, got {type(output_path).__name__}")
    if latents is not None and not isinstance(latents, torch.Tensor):
        raise LatentSyncInputError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise LatentSyncInputError("generator must be one torch.Generator (a call makes one video), got a list "
                                       f"of {len(generator)}")
        generator = generator[0]
    if generator is not None and not isinstance(generator, torch.Generator):
        raise LatentSyncInputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise LatentSyncInputError("callback_on_step_end must be a function callback(pipe, step, timestep, "
                                   f"callback_kwargs), got {type(callback_on_step_end).__name__}")
    names = callback_on_step_end_tensor_inputs
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise LatentSyncInputError("callback_on_step_end_tensor_inputs must be a list of tensor names such as "
                                   f'["latents"], got {names!r}')


def _check_generator_device(generator: Any, device: torch.device) -> None:
    """[`LatentSyncInputError`] for a generator that cannot draw the call's noise: one on another accelerator than
    the pipeline's device (diffusers draws on the CPU for a CPU generator and moves the numbers, but cannot draw a
    CPU tensor from a CUDA generator: it failed after the face analysis)."""
    if isinstance(generator, (list, tuple)):
        generator = generator[0]
    if generator is None or generator.device.type in ("cpu", device.type):
        return
    raise LatentSyncInputError(f"generator is on {generator.device.type} but the pipeline runs on {device.type}: use "
                               f"torch.Generator('cpu') (the same numbers on every device) or one on {device.type}")


def _pixel_mask(resolution: int) -> torch.Tensor:
    """The mouth mask ``(1, 1, R, R)`` that masks the faces before the VAE (float64: the official masked image is
    the float32 face times the float64 mask, rounded once to the VAE's dtype)."""
    return torch.from_numpy(np.array(mouth_mask(resolution)))[None, None]


def _check_frame_count(source: FrameSource, decoded: int) -> None:
    """[`InvalidVideoError`] when a video kept on its own timeline decodes to another number of frames than it
    has timestamps."""
    if source.timestamps is not None and decoded != len(source.timestamps):
        raise InvalidVideoError(f"{source.label}: {decoded} frames decoded but {len(source.timestamps)} "
                                "timestamps read; its frame rate cannot be kept (use output_fps=25)")


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
