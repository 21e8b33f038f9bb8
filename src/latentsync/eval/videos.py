"""Score a folder of generated videos against reference videos, with the metrics of the LatentSync paper.

* Reconstruction setting (a video re-synced to its own audio, compared with the original): per-video PSNR and
  SSIM over frames, for generated / reference files with the same name (stem).
* Cross setting (sets of generated vs real videos, any pairing): FID over frames, FVD over 16-frame clips.
* Lip sync: LSE-C (sync confidence) and LSE-D (minimum mean feature distance) and the A/V offset of every
  generated video with the SyncNet estimator of [`latentsync.eval.sync_confidence`].

Frames are compared on the face by default (``crop="face"``: a square around the MediaPipe face box of the
reference frame, resized to ``crop_size``), or on the whole frame (``crop="none"``: PSNR/SSIM on full frames,
FID/FVD on the centred square). The report is written as ``metrics.json`` (all numbers and settings),
``metrics.csv`` (one row per video), ``summary.png`` (bar charts) and ``summary.html`` (tables + the chart).
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from .._deprecation import moved_attribute
from ..errors import LatentSyncInputError
from ..media.files import find_videos, is_video_file
from ..media.video import iter_frames
from ..tempfiles import write_files_atomically
from . import metrics as M
from .config import (OFFICIAL_SYNCNET_V2_FILE, OFFICIAL_SYNCNET_V2_REPO, REPORT_FILES, SSIM_WINDOW, VideoEvalConfig,
                     check_report_output)
from .sync_confidence import estimate_sync, load_sync_model

logger = logging.getLogger(__name__)

def _stem(name: str) -> str:
    """A video's name without its ending, in Unicode's composed form: generated and reference videos pair by it, also
    when one side was named on macOS (which saves an ``é`` as ``e`` and an accent)."""
    return unicodedata.normalize("NFC", os.path.splitext(os.path.basename(name))[0])


def list_videos(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the video files directly inside ``folder`` (or of ``folder`` itself, a video file); the
    stems in Unicode's composed form."""
    if os.path.isfile(folder):
        if not is_video_file(folder):
            raise LatentSyncInputError(f"{folder} is not a video file: give a folder of videos or one video")
        return {_stem(folder): folder}
    if not os.path.isdir(folder):
        raise LatentSyncInputError(f"folder not found: {folder}")
    out: dict[str, str] = {}
    found = find_videos(folder, recursive=True)  # one walk: the sub-folders' videos are only counted
    for name in (n for n in found if os.path.dirname(n) == ""):
        stem = _stem(name)
        if stem in out:
            logger.warning("%s: skipped, %s has the same name", os.path.join(folder, name), out[stem])
            continue
        out[stem] = os.path.join(folder, name)
    nested = sum(os.path.dirname(n) != "" for n in found)
    if nested:
        logger.warning("%d video(s) in sub-folders of %s are not evaluated (only files directly inside it are)",
                       nested, folder)
    return out


def _square(frame: np.ndarray) -> tuple[int, int, int, int]:
    h, w = frame.shape[:2]
    s = min(h, w)
    return ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)


class _SetFeatures:
    """Collects FID frame features and FVD clips of one side (generated or reference)."""

    def __init__(self, cfg: VideoEvalConfig, frame_extractor, video_extractor):
        self.cfg, self.frame_extractor, self.video_extractor = cfg, frame_extractor, video_extractor
        self.frame_feats: list[np.ndarray] = []
        self.clip_feats: list[np.ndarray] = []
        self._batch: list[np.ndarray] = []
        self._video_feats: list[np.ndarray] = []  # frame features of the current video, kept once it ends
        self._clip_buffer: list[np.ndarray] = []

    @property
    def fvd_keep(self) -> int:
        return self.cfg.fvd_start + self.cfg.fvd_clips_per_video * self.cfg.fvd_frames

    def add(self, index: int, image: np.ndarray) -> None:
        if self.frame_extractor is not None:
            self._batch.append(image)
            if len(self._batch) >= self.cfg.batch_size:
                self._flush()
        if self.video_extractor is not None and index < self.fvd_keep:
            self._clip_buffer.append(image)

    def _flush(self) -> None:
        if self._batch:
            self._video_feats.append(M.frame_features(self._batch, self.frame_extractor, self.cfg.batch_size))
            self._batch = []

    def discard_video(self) -> None:
        """Forget the frames of the current video (it failed part-way): they must not mix with the next one."""
        self._batch, self._video_feats, self._clip_buffer = [], [], []

    def end_video(self, path: str) -> None:
        """Keep the features of video ``path``, read to its end (or to where its comparison stopped)."""
        self._flush()
        self.frame_feats += self._video_feats
        self._video_feats = []
        if self.video_extractor is not None:
            n = len(self._clip_buffer)
            starts = M.clip_windows(n, self.cfg.fvd_frames, self.cfg.fvd_start, self.cfg.fvd_clips_per_video)
            if not starts:
                logger.warning("%s: no FVD clip, %d frame%s read (%d needed)", path, n, "s" * (n != 1),
                               self.cfg.fvd_frames)
            clips = [np.stack(self._clip_buffer[s : s + self.cfg.fvd_frames]) for s in starts]
            if clips:
                self.clip_feats.append(M.clip_features(clips, self.video_extractor, batch_size=len(clips)))
            self._clip_buffer = []

    def frames(self) -> np.ndarray:
        return np.concatenate(self.frame_feats) if self.frame_feats else np.zeros((0, 0))

    def clips(self) -> np.ndarray:
        return np.concatenate(self.clip_feats) if self.clip_feats else np.zeros((0, 0))


def _frames(path: str, max_frames: int | None) -> Iterator[np.ndarray]:
    for i, frame in enumerate(iter_frames(path, fps=25)):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _prepare(frame: np.ndarray, box, size: int | None) -> np.ndarray:
    img = M.crop(frame, box)
    if size is not None and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC)
    return img


def _scan_pair(gen_path: str, ref_path: str | None, cfg: VideoEvalConfig, gen_set: _SetFeatures | None,
               ref_set: _SetFeatures | None, recon: bool, device: str | torch.device = "cpu") -> dict:
    """One pass over a generated video (and its reference): PSNR/SSIM and set features."""
    face = cfg.crop == "face"
    cropper = M.FaceCropper() if face else None
    psnr, ssim, pending = [], [], ([], [])
    n = 0

    def compare():
        if pending[0]:
            g, r = np.stack(pending[0]), np.stack(pending[1])
            if "psnr" in cfg.metrics:
                psnr.extend(M.frame_psnr(g, r, device).tolist())
            if "ssim" in cfg.metrics:
                if min(g.shape[1:3]) < SSIM_WINDOW:
                    raise LatentSyncInputError(f"frames of {g.shape[2]}x{g.shape[1]} pixels are smaller than the "
                                               f"SSIM window ({SSIM_WINDOW}); leave ssim out with --metrics")
                ssim.extend(M.frame_ssim(g, r, device).tolist())
            pending[0].clear()
            pending[1].clear()

    try:
        gen_iter = _frames(gen_path, cfg.max_frames)
        ref_iter = _frames(ref_path, cfg.max_frames) if ref_path else None
        for i, gen in enumerate(gen_iter):
            ref = next(ref_iter, None) if ref_iter is not None else None
            if ref_iter is not None and ref is None:
                logger.warning("%s has more frames than its reference; compared the first %d", gen_path, i)
                break
            if ref is not None and gen.shape != ref.shape:
                if i == 0 and abs(gen.shape[1] * ref.shape[0] / (gen.shape[0] * ref.shape[1]) - 1) > 0.01:
                    logger.warning("%s is %dx%d and its reference %dx%d: its frames were stretched to the "
                                   "reference's shape, so its scores compare distorted faces", gen_path,
                                   gen.shape[1], gen.shape[0], ref.shape[1], ref.shape[0])
                gen = cv2.resize(gen, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA)
            basis = ref if ref is not None else gen
            box = cropper.box(basis) if face else _square(basis)
            g_img = _prepare(gen, box, cfg.crop_size)
            if gen_set is not None:
                gen_set.add(i, g_img)
            if ref is not None:
                r_img = _prepare(ref, box, cfg.crop_size)
                if ref_set is not None:
                    ref_set.add(i, r_img)
                if recon:
                    pending[0].append(g_img if face else gen)
                    pending[1].append(r_img if face else ref)
                    if len(pending[0]) * pending[0][0].size >= 16 * 256 * 256 * 3:  # bounded memory on big frames
                        compare()
            n = i + 1
        if cropper is not None and n and not cropper.found_face:
            logger.warning("no face found in %s: compared the centred square of its frames (--crop none compares "
                           "whole frames)", ref_path or gen_path)
        if ref_iter is not None and n and next(ref_iter, None) is not None:
            logger.warning("%s has fewer frames than its reference; compared the first %d", gen_path, n)
        compare()
    except BaseException:
        for features in (gen_set, ref_set):  # nothing of a video that failed part-way stays in the sets
            if features is not None:
                features.discard_video()
        raise
    finally:
        if cropper is not None:
            cropper.close()
    if gen_set is not None:
        gen_set.end_video(gen_path)
    if ref_set is not None and ref_path:
        ref_set.end_video(ref_path)
    row = {"frames": n}
    if recon:
        row["psnr"] = M.mean_or_nan(psnr)
        row["ssim"] = M.mean_or_nan(ssim)
    return row


def evaluate_videos(
    generated_dir: str,
    reference_dir: str | None = None,
    config: VideoEvalConfig | None = None,
    frame_extractor: M.FrameFeatureExtractor | None = None,
    video_extractor: M.VideoFeatureExtractor | None = None,
    sync_model=None,
    device: str | torch.device = "cpu",
) -> dict:
    """Evaluate every video in ``generated_dir`` (see the module docstring) and return the report dict.

    Args:
        reference_dir: reference videos; same-named files form the reconstruction pairs (PSNR/SSIM), all of them
            form the real set of FID/FVD.
        frame_extractor / video_extractor: FID / FVD backbones (default: the standard FID Inception and the I3D
            TorchScript, downloaded by their usual ids); any callable of the documented signature.
        sync_model: a SyncNet for LSE-C/LSE-D (see [`load_sync_model`]; default: the classic ``syncnet_v2.model``
            of the official Hub repository).
    """
    cfg = config or VideoEvalConfig()
    generated = list_videos(generated_dir)
    if not generated:
        raise LatentSyncInputError(f"no videos in {generated_dir}")
    references = list_videos(reference_dir) if reference_dir else {}
    if len(generated) == 1 and len(references) == 1 and os.path.isfile(generated_dir) and os.path.isfile(reference_dir):
        references = {next(iter(generated)): next(iter(references.values()))}  # two files: a pair, whatever names
    needs_ref = [m for m in cfg.metrics if m in ("psnr", "ssim", "fid", "fvd")]
    if needs_ref and not references:
        raise LatentSyncInputError(f"metrics {', '.join(needs_ref)} need reference videos (--reference)")
    pairs = {k: references[k] for k in generated if k in references}
    recon = bool({"psnr", "ssim"} & set(cfg.metrics))
    if recon and not pairs:
        raise LatentSyncInputError("PSNR/SSIM compare generated and reference videos with the same file name; "
                                   "none match")
    unpaired = [name for name in generated if name not in pairs]
    if recon and unpaired:
        logger.warning("no reference of the same name, so no PSNR/SSIM, for %d generated video%s: %s%s",
                       len(unpaired), "s" * (len(unpaired) != 1), ", ".join(unpaired[:5]),
                       " ..." if len(unpaired) > 5 else "")

    if "fid" in cfg.metrics and frame_extractor is None:
        frame_extractor = M.load_frame_extractor(device=device)
    if "fvd" in cfg.metrics and video_extractor is None:
        video_extractor = M.load_video_extractor(device=device)
    use_fid = frame_extractor if "fid" in cfg.metrics else None
    use_fvd = video_extractor if "fvd" in cfg.metrics else None
    cross = use_fid is not None or use_fvd is not None
    gen_set = _SetFeatures(cfg, use_fid, use_fvd) if cross else None
    ref_set = _SetFeatures(cfg, use_fid, use_fvd) if cross else None

    if "sync" in cfg.metrics and sync_model is None:
        sync_model = load_sync_model(OFFICIAL_SYNCNET_V2_REPO, weights_name=OFFICIAL_SYNCNET_V2_FILE, device=device)

    rows = []
    ref_alone = [k for k in references if k not in pairs]
    for name, path in tqdm(generated.items(), desc="eval videos", unit="video"):
        row: dict = {"name": name, "reference": os.path.basename(pairs[name]) if name in pairs else None}
        try:
            row.update(_scan_pair(path, pairs.get(name), cfg, gen_set, ref_set if name in pairs else None,
                                  recon and name in pairs, device))
        except LatentSyncInputError as exc:
            logger.error("%s: %s", name, exc)
            row["error"] = str(exc)
            if name in pairs:
                ref_alone.append(name)  # its reference still counts in the real set, if it reads
        if "sync" in cfg.metrics:
            row.update(_sync_row(path, sync_model, cfg))
        rows.append(row)
    reference_errors = {}
    if ref_set is not None:
        for name in tqdm(ref_alone, desc="eval references", unit="video"):
            try:
                _scan_pair(references[name], None, cfg, ref_set, None, recon=False)
            except LatentSyncInputError as exc:
                logger.error("reference %s: %s", name, exc)
                reference_errors[name] = str(exc)

    summary: dict = {"num_generated": len(generated), "num_reference": len(references), "num_pairs": len(pairs),
                     "num_errors": sum("error" in r for r in rows)}
    if reference_errors:
        summary["reference_errors"] = reference_errors
    for key in ("psnr", "ssim"):
        if key in cfg.metrics:
            summary[key] = M.mean_or_nan(r.get(key) for r in rows)
    if use_fid is not None:
        summary["fid"] = _fd_or_nan(gen_set.frames(), ref_set.frames(), "FID")
        summary["fid_frames"] = [len(gen_set.frames()), len(ref_set.frames())]
    if use_fvd is not None:
        summary["fvd"] = _fd_or_nan(gen_set.clips(), ref_set.clips(), "FVD")
        summary["fvd_clips"] = [len(gen_set.clips()), len(ref_set.clips())]
    if "sync" in cfg.metrics:
        summary["lse_c"] = M.mean_or_nan(r.get("lse_c") for r in rows)
        summary["lse_d"] = M.mean_or_nan(r.get("lse_d") for r in rows)
        summary["abs_offset"] = M.mean_or_nan(abs(r["sync_offset"]) for r in rows if r.get("sync_offset") is not None)
    return {"summary": summary, "videos": rows, "settings": asdict(cfg)}


def _fd_or_nan(a: np.ndarray, b: np.ndarray, what: str) -> float:
    if len(a) < 2 or len(b) < 2:
        logger.warning("%s needs at least 2 samples per side (got %d and %d)", what, len(a), len(b))
        return float("nan")
    return M.frechet_distance_from_features(a, b)


def _sync_row(path: str, model, cfg: VideoEvalConfig) -> dict:
    try:
        est = estimate_sync(path, model, vshift=cfg.sync_vshift, max_frames=cfg.max_frames,
                            faces_aligned=cfg.aligned)
    except LatentSyncInputError as exc:
        logger.error("sync of %s: %s", path, exc)
        return {"sync_offset": None, "lse_c": float("nan"), "lse_d": float("nan"), "sync_error": str(exc)}
    return {"sync_offset": est.offset, "lse_c": est.confidence, "lse_d": est.min_distance}


# ----------------------------------------------------------------------------------------------- report


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def format_value(value) -> str:
    """A number as the report shows it (4 significant digits; ``-`` for a missing or infinite value)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_report(report: dict, output_dir: str) -> dict[str, str]:
    """Write ``metrics.json``, ``metrics.csv``, ``summary.png`` and ``summary.html``; return their paths.

    All four are written to hidden partial files first and renamed in place once every one is complete, so an error
    or an interruption leaves the previous report (or none) as it was, never a mix or half a file.
    """
    check_report_output(output_dir)
    paths = {k: os.path.join(output_dir, f) for k, f in REPORT_FILES.items()}
    write_files_atomically(paths, lambda partials: _write_report_files(report, partials))
    return paths


def _write_report_files(report: dict, paths: dict[str, str]) -> None:
    with open(paths["json"], "w") as f:
        json.dump(_clean(report), f, indent=2)
    columns: list[str] = []
    for row in report["videos"]:
        columns += [k for k in row if k not in columns]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in report["videos"]:
            # numbers in full and an empty cell for a missing one (a "-" made the column text for pandas / sheets)
            writer.writerow({k: _clean(row.get(k)) for k in columns})
    _plot(report, paths["png"])
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(format_value(v))}</td></tr>"
                           for k, v in report["summary"].items() if not isinstance(v, (list, dict)))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in report["videos"])
    with open(paths["html"], "w") as f:
        f.write(
            "<!doctype html><html><head><meta charset='utf-8'><title>latentsync eval</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Evaluation</h1><h2>Summary</h2><table>{summary_rows}</table>"
            f"<h2>Per video</h2><table><tr>{head}</tr>{body}</table>"
            "<img src='summary.png' alt='per-video metrics'></body></html>\n"
        )


def _plot(report: dict, path: str) -> None:
    import matplotlib  # deferred: optional (eval extra) and slow to import; only the report's chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: see above

    rows = report["videos"]
    keys = [k for k in ("psnr", "ssim", "lse_c", "lse_d") if any(_finite(r.get(k)) for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        vals = [r.get(key) if _finite(r.get(key)) else 0.0 for r in rows]
        ax.bar(range(len(rows)), vals, color="#4c72b0")
        ax.set_title(key.upper().replace("_", "-"))
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["name"][:12] for r in rows], rotation=60, fontsize=7)
    if not keys:
        axes[0][0].axis("off")
    text = "  ".join(f"{k.upper()} {format_value(report['summary'].get(k))}" for k in ("fid", "fvd") if k in report["summary"])
    if text:
        fig.suptitle(text, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def __getattr__(name: str) -> Any:
    """Names that lived here before the re-layout keep working for one release, with a deprecation warning."""
    return moved_attribute(__name__, name)
