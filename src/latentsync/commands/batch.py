"""``latentsync batch JOBS OUTPUT_DIR``: lip-sync many videos with one model load.

JOBS is a CSV file (columns ``video``, ``audio`` and optionally ``output`` and ``audio_track``) or a folder of
video/audio pairs of the same name (``talk.mp4`` + ``talk.wav``; ``--audio-dir`` when the audio is elsewhere).
Finished outputs are skipped, so the same command resumes an interrupted batch (Ctrl-C keeps the finished outputs and
says how many); a job that fails is reported and the others go on. The results are written to
``OUTPUT_DIR/batch_results.csv`` and ``batch_summary.md``; the exit status is 1 when a job failed.

Under ``accelerate launch --multi_gpu --num_processes N -m latentsync batch ...`` (one machine, or several through
accelerate's usual ``--num_machines`` / ``--machine_rank`` / ``--main_process_ip`` options) each process loads the
model on its own GPU and runs its share of the jobs; the main process writes the one results table of all of them,
and every process exits with 1 when any job failed.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..batch import (
    batch_processes,
    gather_results,
    process_device,
    process_share,
    read_jobs,
    run_batch,
    summary_table,
    write_results,
)
from .run import add_generation_arguments, check_model_options, face_arguments, generation_kwargs, load_pipeline

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync batch", description="Lip-sync many videos with one model load.",
                                epilog="The job list and resuming: see `latentsync.batch`.")
    p.add_argument("jobs", help="CSV file (video,audio[,output][,audio_track] columns; audio_track: that job's "
                                "--audio-track) or folder of video/audio pairs")
    p.add_argument("output_dir", help="folder for the lip-synced videos and the results table")
    p.add_argument("--audio-dir", default=None, help="folder of the audio files (folder jobs; default: the same)")
    p.add_argument("--format", default=".mp4", choices=[".mp4", ".mov", ".mkv"], help="output container")
    p.add_argument("--overwrite", action="store_true", help="redo jobs whose output exists (default: skip them)")
    add_generation_arguments(p)
    return p


def batch(argv: list[str]) -> int:
    """Read the jobs, load the pipeline once (per process), run every job (this process's share), write and print
    the results (the main process)."""
    args = parser().parse_args(argv)
    jobs = read_jobs(args.jobs, args.output_dir, args.audio_dir, args.format)
    source = check_model_options(args)  # the model and its options, before torch and accelerate are imported
    if args.verbose:
        logging.getLogger("latentsync").setLevel(logging.DEBUG)
    import torch  # deferred: seconds to import; the job list and the model are checked above without it

    state = batch_processes(args.device)
    mine = process_share(jobs, state)
    if state.num_processes > 1:
        args.device = process_device(args.device, state)
        logger.info("process %d of %d: %d of the %d jobs from %s on %s", state.process_index, state.num_processes,
                    len(mine), len(jobs), args.jobs, args.device or "the best device")
    else:
        logger.info("%d jobs from %s", len(jobs), args.jobs)
    pipe = load_pipeline(args, source.local_files_only)
    pipe.set_progress_bar_config(leave=False)
    kwargs = {**generation_kwargs(args), **face_arguments(args)}
    waiting = False  # for the other processes: this process's jobs are done
    try:
        results = run_batch(pipe, mine, overwrite=args.overwrite, process_index=state.process_index,
                            make_generator=lambda: torch.Generator("cpu").manual_seed(args.seed), **kwargs)
        waiting = True
        results = gather_results(results, state)
        if state.is_main_process:
            csv_path, md_path = write_results(results, args.output_dir)
            logger.info("results:\n%s", summary_table(results))
            logger.info("wrote %s and %s", csv_path, md_path)
        if state.num_processes > 1:
            state.wait_for_everyone()  # the table is written before any process reports
            state.destroy_process_group()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (RunInterrupted): the finished outputs stay
        written = sum(os.path.isfile(job.output) for job in mine)
        where = ", the job that was running left nothing" if not waiting else " (its jobs were done" + (
            ": it was waiting for the other processes)" if state.num_processes > 1 else ")")
        logger.error("stopped by %s: %d of the %d outputs%s are written and kept%s; the same command resumes",
                     getattr(exc, "signal_name", "Ctrl-C"), written, len(mine),
                     f" of process {state.process_index}" if state.num_processes > 1 else "", where)
        return getattr(exc, "exit_code", 130)
    return 1 if any(r.status == "failed" for r in results) else 0
