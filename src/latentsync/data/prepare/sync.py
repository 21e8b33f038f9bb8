"""The sync step: a SyncNet estimates each clip's audio-visual offset and how sure it is."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ...audio_features.wav2lip_mel import wav2lip_mel
from ...eval import sync_confidence as sc
from ...media.constants import SAMPLES_PER_FRAME
from ...models.syncnet import StableSyncNet
from .config import PrepareConfig

SyncChecker = Callable[[Sequence[np.ndarray], np.ndarray, int], tuple[int, float]]


class SyncNetChecker:
    """A/V offset and confidence of an aligned clip with a SyncNet (classic v2 or StableSyncNet).

    ``checker(faces, audio, start_frame) -> (offset, confidence)``: ``faces`` are the clip's aligned RGB frames,
    ``audio`` the whole 16 kHz track of the source and ``start_frame`` the clip's first frame in it. The clip's own
    audio is scored (as the official pipeline scores its segment files); ``offset`` follows
    [`~latentsync.data.prepare.shifted_audio`]: the clip's sound is ``offset`` frames late in the source track.
    """

    def __init__(self, model, vshift: int = 15, batch_size: int = 16):
        self.model, self.vshift, self.batch_size = model, vshift, batch_size
        self.default_min_confidence = 0.2 if isinstance(model, StableSyncNet) else 3.0

    def __call__(self, faces: Sequence[np.ndarray], audio: np.ndarray, start_frame: int) -> tuple[int, float]:
        n = len(faces)
        segment = audio[start_frame * SAMPLES_PER_FRAME : (start_frame + n) * SAMPLES_PER_FRAME]
        if isinstance(self.model, StableSyncNet):
            res = int(self.model.config.resolution)
            mouths = np.stack([f if f.shape[:2] == (res, res)
                               else cv2.resize(f, (res, res), interpolation=cv2.INTER_AREA) for f in faces])
            if self.model.config.lower_half:
                mouths = mouths[:, res // 2 :]
            vis, aud = sc.stable_features(self.model, mouths, wav2lip_mel(segment), self.batch_size)
            metric = "cosine"
        else:
            crops = np.stack([cv2.resize(np.ascontiguousarray(f[..., ::-1]), (sc.CLASSIC_CROP, sc.CLASSIC_CROP))
                              for f in faces])
            vis, aud = sc.classic_features(self.model, crops, sc.classic_mfcc(segment), self.batch_size)
            metric = "euclidean"
        est = sc.offset_confidence(vis, aud, self.vshift, metric)
        # estimate_sync reports where the audio matching frame i lies as i - offset; ours is i + offset.
        return -int(est.offset), float(est.confidence)


def load_sync_checker(config: PrepareConfig, device: str = "cpu") -> SyncNetChecker:
    """[`SyncNetChecker`] with the network named by ``config.syncnet`` (default: the classic ``syncnet_v2.model``
    of the official LatentSync Hub repository, which the official thresholds 3 / 6 refer to)."""
    if config.syncnet is None:
        model = sc.load_sync_model(sc.OFFICIAL_SYNCNET_V2_REPO, weights_name=sc.OFFICIAL_SYNCNET_V2_FILE, device=device)
    else:
        model = sc.load_sync_model(config.syncnet, weights_name=config.syncnet_weights_name, device=device)
    return SyncNetChecker(model)
