"""``latentsync batch JOBS OUTPUT_DIR``: lip-sync many videos with one model load.

JOBS is a CSV file (columns ``video``, ``audio`` and optionally ``output``) or a folder of video/audio pairs of the same
name (``talk.mp4`` + ``talk.wav``; ``--audio-dir`` when the audio is elsewhere). Finished outputs are skipped, so the
same command resumes an interrupted batch; a job that fails is reported and the others go on. The results are
written to ``OUTPUT_DIR/batch_results.csv`` and ``batch_summary.md``; the exit status is 1 when a job failed.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ..batch import read_jobs, run_batch, summary_table, write_results
from ..model_source import check_model_source
from .run import add_generation_arguments, face_arguments, generation_kwargs, load_pipeline

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync batch", description="Lip-sync many videos with one model load.",
                                epilog="The job list and resuming: see `latentsync.batch`.")
    p.add_argument("jobs", help="CSV file (video,audio[,output] columns) or folder of video/audio pairs")
    p.add_argument("output_dir", help="folder for the lip-synced videos and the results table")
    p.add_argument("--audio-dir", default=None, help="folder of the audio files (folder jobs; default: the same)")
    p.add_argument("--format", default=".mp4", choices=[".mp4", ".mov", ".mkv"], help="output container")
    p.add_argument("--overwrite", action="store_true", help="redo jobs whose output exists (default: skip them)")
    add_generation_arguments(p)
    return p


def batch(argv: list[str]) -> int:
    """Read the jobs, load the pipeline once, run every job, write and print the results."""
    args = parser().parse_args(argv)
    jobs = read_jobs(args.jobs, args.output_dir, args.audio_dir, args.format)
    logger.info("%d jobs from %s", len(jobs), args.jobs)
    if args.verbose:
        logging.getLogger("latentsync").setLevel(logging.DEBUG)
    pipe = load_pipeline(args, check_model_source(args.model).local_files_only)
    pipe.set_progress_bar_config(leave=False)
    kwargs = {**generation_kwargs(args), **face_arguments(args)}
    results = run_batch(pipe, jobs, overwrite=args.overwrite,
                        make_generator=lambda: torch.Generator("cpu").manual_seed(args.seed), **kwargs)
    csv_path, md_path = write_results(results, args.output_dir)
    logger.info("results:\n%s", summary_table(results))
    logger.info("wrote %s and %s", csv_path, md_path)
    return 1 if any(r.status == "failed" for r in results) else 0
