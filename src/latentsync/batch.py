"""Many lip-sync jobs with one loaded pipeline: the job list (a CSV file or a folder of video/audio pairs), the run
(one job after the other, a failed job reported and skipped, finished outputs kept), and the results table.

    jobs = read_jobs("pairs.csv", "outputs/")
    results = run_batch(pipe, jobs, num_inference_steps=20)
    write_results(results, "outputs/")

A job's output is written atomically by the pipeline, so an existing output file is a finished job: a second run of
the same batch skips it and redoes only what failed or never ran.

Under ``accelerate launch`` (several processes, on one machine or several) each process loads its own pipeline on its
own device and runs its share of the jobs; the results are gathered so that the main process writes one table:

    state = batch_processes(device)
    results = run_batch(pipe, process_share(jobs, state), process_index=state.process_index)
    results = gather_results(results, state)  # every process's results, in job order
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .devices import default_device
from .errors import InvalidOutputError, LatentSyncInputError
from .media.audio import parse_track_number
from .media.constants import AUDIO_EXTENSIONS
from .media.files import is_video_file, same_file
from .media.video import check_output_path
from .tempfiles import make_missing_folders, nearest_folder, remove_empty_folders, writable_problem

if TYPE_CHECKING:  # the pipeline is passed in; importing it here only for the annotation
    import torch
    from accelerate import PartialState

    from .pipeline import LatentSyncPipeline

logger = logging.getLogger(__name__)

RESULTS_CSV = "batch_results.csv"
RESULTS_MD = "batch_summary.md"
STATUSES = ("done", "skipped", "failed")


class BatchListError(LatentSyncInputError):
    """The job list cannot be read (missing file or folder, not a UTF-8 text CSV, wrong CSV columns, a row without a
    video or audio, two jobs writing one file)."""


@dataclass
class BatchJob:
    """One lip-sync job: a talking-face video, the speech to sync it to, and where to write the result;
    ``audio_track``: the speech's track of the audio file, numbered from 1 (None: the run's ``audio_track``)."""

    video: str
    audio: str
    output: str
    audio_track: int | None = None


@dataclass
class JobResult:
    """What became of one job: ``done`` (written now), ``skipped`` (its output existed) or ``failed`` (``error``
    says why)."""

    video: str
    audio: str
    output: str
    status: str
    seconds: float = 0.0
    num_frames: int | None = None
    frames_without_face: int | None = None
    error: str | None = None
    process: int = 0  # the index of the process that ran it (accelerate launch)
    audio_track: int | None = None  # the audio track chosen by hand (numbered from 1); None: the automatic choice


# ---------------------------------------------------------------------------------------------------- job lists
COLUMNS = ("video", "audio", "output", "audio_track")
"""The columns of a CSV job list (any case, any order); other columns are ignored with a warning."""
DELIMITERS = {",": "a comma", ";": "a semicolon", "\t": "a tab"}
"""Field separators of a CSV job list: the one that splits its header into the column names is used (Excel writes
semicolons where the comma is the decimal mark; tab-separated lists come from spreadsheets and scripts)."""


def read_jobs(source: str | os.PathLike, output_dir: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
              output_format: str = ".mp4") -> list[BatchJob]:
    """The jobs of a CSV file or a folder, once ``output_dir`` is known to be usable.

    CSV (UTF-8, with or without the BOM that Excel's "CSV UTF-8" writes; fields separated by commas, semicolons or
    tabs; a path with the separator in it in double quotes): a header line naming the columns ``video`` and
    ``audio`` (and optionally ``output``, and ``audio_track``: the job's audio track of the speech, numbered from 1
    as the log and players number them; empty: the run's choice), in any order and case; relative paths (and ``~``)
    are relative to the CSV's folder, relative outputs to ``output_dir``. Folder: every video in it, paired with the
    audio file of the same name (``talk.mp4`` + ``talk.wav``) in the folder or in ``audio_dir``; a video without one
    becomes a job whose audio is missing, which fails with a clear message. Outputs default to
    ``output_dir/<video name><output_format>``.

    Raises:
        BatchListError: ``source`` does not exist or is not a UTF-8 text CSV, the CSV lacks its header or a column,
            has no rows, a row has no video or audio, more fields than the header or an audio track that is not a
            number from 1, a relative path is found from the current folder but not from the CSV's, two jobs would
            write the same file, a job's output cannot be written (not ``.mp4``/``.mov``/``.mkv``, one of its
            inputs, another job's input, a folder that cannot be created or written: every such row is named at
            once), ``audio_dir`` is missing or is given with a CSV.
        InvalidOutputError: ``output_dir`` (or a folder above it) is a file, or it is the folder of videos ``source``
            (the outputs would replace the videos).
    """
    source, output_dir = os.fspath(source), os.fspath(output_dir)
    audio_dir = os.fspath(audio_dir) if audio_dir is not None else None
    _check_output_dir(output_dir)
    if os.path.isdir(source):
        if os.path.isdir(output_dir) and os.path.samefile(source, output_dir):
            raise InvalidOutputError(f"output folder {output_dir} is the input folder {source}: the outputs would "
                                     "replace the videos; choose another output folder")
        if audio_dir is not None and not os.path.isdir(audio_dir):
            raise BatchListError(f"audio folder {'is a file' if os.path.exists(audio_dir) else 'not found'}: "
                                 f"{audio_dir}")
        jobs, labels = _folder_jobs(source, output_dir, audio_dir or source, output_format)
        context = f" in {source} (videos of the same name in two formats; rename one)"
    elif os.path.isfile(source):
        if audio_dir is not None:
            raise BatchListError(f"an audio folder (--audio-dir {audio_dir}) goes with a folder of videos; the job "
                                 f"list {source} names each job's audio in its audio column")
        jobs, labels = _csv_jobs(source, output_dir, output_format)
        context = f" of {source} (give each its own name in an output column)"
    else:
        raise BatchListError(f"job list not found: {source} (a CSV file with video,audio columns or a folder)")
    outputs: dict[str, str] = {}
    for job, label in zip(jobs, labels):
        key = os.path.abspath(job.output)
        if key in outputs:
            raise BatchListError(f"two jobs write {job.output}: {outputs[key]} and {label}{context}")
        outputs[key] = label
    _check_job_outputs(jobs, labels, source)
    # one job's output may not be another job's input: it would be replaced (or taken for a finished output)
    # (a job whose output is its own input fails on its own, and never writes)
    writers = {_file_key(job.output): job for job in jobs if os.path.exists(job.output)
               and not any(os.path.exists(s) and same_file(job.output, s) for s in (job.video, job.audio))}
    for job in jobs:
        for source in (job.video, job.audio):
            writer = writers.get(_file_key(source)) if os.path.exists(source) else None
            if writer is not None and writer is not job:
                raise BatchListError(f"the output of the job of {writer.video} is {writer.output}, which another "
                                     f"job reads ({job.video}): writing it would destroy that input; give another "
                                     "output")
    return jobs


def _check_job_outputs(jobs: Sequence[BatchJob], labels: Sequence[str], source: str) -> None:
    """[`BatchListError`] naming every job (its row, or its video) whose output the single-run command would refuse
    ([`check_output_path`]: a format the writer cannot write, a folder, one of the job's own inputs, a folder that
    cannot be created or written), so that a bad list fails at once rather than job by job after the model loads."""
    problems = []
    for job, label in zip(jobs, labels):
        try:
            # the partial files of killed runs are removed as each job runs (listing the folder per job here would
            # take seconds for thousands of jobs)
            check_output_path(job.output, (job.video, job.audio), create_folder=True, remove_partials=False)
        except InvalidOutputError as exc:
            problems.append(f"{label}: {exc}")
    if problems:
        count = f"{len(problems)} jobs" if len(problems) > 1 else "a job"
        raise BatchListError(f"{source}: {count} cannot write {'their' if len(problems) > 1 else 'its'} output: "
                             + "; ".join(problems))


def _file_key(path: str) -> tuple[int, int]:
    """The identity of an existing file (device and inode: the same through links)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _check_output_dir(output_dir: str | os.PathLike) -> None:
    """[`InvalidOutputError`] when ``output_dir`` cannot be the batch's output folder: it, or a folder above it, is a
    file, or it (or, when missing, the folder it would be created in) is not writable. A missing folder is fine (it
    is created when the first job runs)."""
    output_dir = os.fspath(output_dir)
    existing, blocker = nearest_folder(output_dir)
    if blocker == os.path.abspath(output_dir):
        raise InvalidOutputError(f"output folder {output_dir} is a file, not a folder; choose a folder")
    if blocker is not None:
        raise InvalidOutputError(f"cannot create the output folder {output_dir}: {blocker} is a file")
    problem = writable_problem(existing)
    if problem is not None:
        raise InvalidOutputError(f"output folder is not writable: {output_dir} ({problem})")


def _output_for(video: str, output_dir: str, output_format: str) -> str:
    return os.path.join(output_dir, os.path.splitext(os.path.basename(video))[0] + output_format)


def _folder_jobs(folder: str, output_dir: str, audio_dir: str, output_format: str
                 ) -> tuple[list[BatchJob], list[str]]:
    """The jobs of a folder of pairs, and the video names (to name the jobs in messages)."""
    audio_by_stem: dict[str, str] = {}
    for name in sorted(os.listdir(audio_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in AUDIO_EXTENSIONS and not name.startswith("."):
            audio_by_stem.setdefault(_nfc(stem), os.path.join(audio_dir, name))
    videos = sorted(n for n in os.listdir(folder)  # also a GIF: its speech is the paired file
                    if is_video_file(n, silent=True) and os.path.isfile(os.path.join(folder, n)))
    if not videos:
        raise BatchListError(f"no video files in {folder}")
    jobs = []
    for name in videos:
        stem = os.path.splitext(name)[0]
        audio = audio_by_stem.get(_nfc(stem), os.path.join(audio_dir, f"{stem}.wav"))  # no pair: fails as its job
        jobs.append(BatchJob(os.path.join(folder, name), audio, _output_for(name, output_dir, output_format)))
    return jobs, videos


def _nfc(name: str) -> str:
    """``name`` in Unicode's composed form: names typed on one system match the same names saved on another."""
    return unicodedata.normalize("NFC", name)


def _delimiter(header: str) -> str:
    """The separator that splits the ``header`` line into the video and audio columns (a comma when none does)."""
    for delimiter in DELIMITERS:
        names = {c.strip().lower() for c in next(csv.reader([header], delimiter=delimiter), [])}
        if {"video", "audio"} <= names:
            return delimiter
    return ","


def _csv_jobs(path: str, output_dir: str, output_format: str) -> tuple[list[BatchJob], list[str]]:
    """The jobs of a CSV file, and where each is in it (``row N``; rows are numbered as in a spreadsheet: the header
    is row 1)."""
    base = os.path.dirname(os.path.abspath(path))
    not_text = f"cannot read job list {path}: not a UTF-8 text CSV" + (
        " (it is a video; give a CSV file with video,audio columns or a folder of pairs)"
        if is_video_file(path, silent=True) else " (save it as CSV UTF-8)")
    with open(path, "rb") as fh:
        if b"\0" in fh.read(4096):  # a binary file, or UTF-16 (which decodes as UTF-8 when it is plain ASCII)
            raise BatchListError(not_text)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise BatchListError(not_text) from None
    layout = "the first line of a CSV job list names its columns: video,audio (and optionally output, audio_track)"
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise BatchListError(f"job list {path} is empty; {layout}")
    delimiter = _delimiter(first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = [c.strip().lower() for c in next(r for r in reader if any(c.strip() for c in r))]
    twice = sorted({c for c in columns if c and columns.count(c) > 1})
    if twice:
        raise BatchListError(f"{path}: column {', '.join(twice)} appears twice in the header")
    missing = [c for c in ("video", "audio") if c not in columns]
    if missing:
        found = ", ".join(c for c in columns if c) or "none"
        kind = ": it is JSON, not CSV" if first.lstrip().startswith(("{", "[")) else ""
        raise BatchListError(f"{path} has no {' or '.join(missing)} column (found: {found}){kind}; {layout}")
    ignored = [c for c in columns if c and c not in COLUMNS]
    if ignored:
        logger.warning("%s: column%s %s ignored (a job list reads %s; the generation options apply to every job)",
                       path, "s" * (len(ignored) > 1), ", ".join(ignored), ", ".join(COLUMNS))
    where = {name: columns.index(name) for name in COLUMNS if name in columns}
    jobs, labels = [], []
    for cells in reader:
        cells = [c.strip() for c in cells]
        row = f"row {reader.line_num}"
        if any(cells[len(columns):]):
            raise BatchListError(f"{path} {row} has {len(cells)} fields but the header has {len(columns)}: a path "
                                 f"with {DELIMITERS[delimiter]} in it must be in double quotes")
        value = {name: cells[i] if i < len(cells) else "" for name, i in where.items()}
        if not value["video"] and not value["audio"]:
            continue  # blank line
        for column in ("video", "audio"):
            if not value[column]:
                raise BatchListError(f"{path} {row} has no {column} (every job needs a video and an audio path)")
        video, audio = (_listed_path(path, row, base, value[c]) for c in ("video", "audio"))
        output = os.path.join(output_dir, os.path.expanduser(value["output"])) if value.get("output") else \
            _output_for(video, output_dir, output_format)
        track = value.get("audio_track", "")
        try:
            number = parse_track_number(track) if track else None
        except ValueError:
            raise BatchListError(f"{path} {row}: audio_track {track!r} is not an audio track number (1 is the "
                                 "file's first track; leave it empty for the track with the speech)") from None
        jobs.append(BatchJob(video, audio, output, number))
        labels.append(row)
    if not jobs:
        raise BatchListError(f"no jobs in {path}: it has a header but no rows")
    return jobs, labels


def _listed_path(job_list: str, row: str, base: str, value: str) -> str:
    """A video or audio path of a CSV row, relative to the CSV's folder ``base``; a relative path that is missing
    there but found from the current folder is refused (the list was written from another folder)."""
    value = os.path.expanduser(value)
    path = os.path.join(base, value)
    if not os.path.exists(path):  # a name typed in one Unicode form, saved on disk in the other (macOS writes NFD)
        path = next((p for p in {unicodedata.normalize(f, path) for f in ("NFC", "NFD")} if os.path.exists(p)), path)
    if not os.path.isabs(value) and not os.path.exists(path) and os.path.exists(value) and \
            os.path.abspath(value) != path:
        raise BatchListError(f"{job_list} {row}: {value} is not in the job list's folder {base} but in the current "
                             "folder: relative paths in a job list are relative to its folder; write them so, or as "
                             "absolute paths")
    return path


# ---------------------------------------------------------------------------------------------------- the run
def run_batch(
    pipe: "LatentSyncPipeline",
    jobs: Sequence[BatchJob],
    overwrite: bool = False,
    make_generator: Callable[[], torch.Generator] | None = None,
    progress: bool = True,
    process_index: int = 0,
    **call_kwargs: Any,
) -> list[JobResult]:
    """Run every job with ``pipe`` (loaded once), in order, with a progress bar over the jobs.

    A job whose output exists is skipped unless ``overwrite``; a job that fails (bad input, an output path that is
    an input or of a wrong format, no face, any error) is logged and recorded, leaves no output and no new folder
    behind, and the batch goes on. ``make_generator`` gives each job a fresh generator (same seed, same
    result as a single run); ``call_kwargs`` go to the pipeline call (``num_inference_steps``, ...).
    ``process_index``: this process's index when several share the batch (recorded with each result; its progress
    bar is labelled with it).
    """
    results = []
    desc = f"Batch (process {process_index})" if process_index else "Batch"
    bar = tqdm(jobs, desc=desc, unit="job", disable=not progress, position=process_index)
    for job in bar:
        bar.set_postfix_str(os.path.basename(job.video))
        start = time.perf_counter()
        created: list[str] = []
        track = job.audio_track if job.audio_track is not None else call_kwargs.get("audio_track")
        try:
            # first: an output that is an input (or of a wrong format) is no finished job to skip
            check_output_path(job.output, (job.video, job.audio), create_folder=True)
            if os.path.isfile(job.output) and not overwrite:
                results.append(JobResult(job.video, job.audio, job.output, "skipped", process=process_index,
                                         audio_track=track))
                continue
            created = make_missing_folders(os.path.dirname(os.path.abspath(job.output)))
            kwargs = {**call_kwargs, "audio_track": track}
            if make_generator is not None:
                kwargs["generator"] = make_generator()
            out = pipe(video=job.video, audio=job.audio, output_path=job.output, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            remove_empty_folders(created)
            raise
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the others; its error is reported
            remove_empty_folders(created)
            message = str(exc) if isinstance(exc, LatentSyncInputError) else f"{type(exc).__name__}: {exc}"
            logger.error("%s: %s", job.video, message)
            results.append(JobResult(job.video, job.audio, job.output, "failed", time.perf_counter() - start,
                                     error=message, process=process_index, audio_track=track))
            continue
        results.append(JobResult(job.video, job.audio, job.output, "done", time.perf_counter() - start,
                                 out.num_frames, out.frames_without_face, process=process_index, audio_track=track))
    return results


# ---------------------------------------------------------------------------------------------------- processes
def batch_processes(device: str | None = None) -> PartialState:
    """accelerate's view of the processes sharing the batch (one, unless started by ``accelerate launch``).

    ``device``: the ``--device`` of the run (None: the best available). Processes that compute on the CPU or MPS
    talk to each other over gloo (accelerate's CPU mode); CUDA processes over NCCL.

    Raises:
        LatentSyncInputError: the launcher started several processes but they do not see each other (each would run
            every job).
    """
    from accelerate import PartialState  # deferred: accelerate imports torch (seconds); the job list is read without it

    world = int(os.environ.get("WORLD_SIZE", "1"))
    kind = (device or default_device()).split(":")[0]
    state = PartialState(cpu=world > 1 and kind != "cuda")
    if state.num_processes != world:
        raise LatentSyncInputError(
            f"the launcher started {world} processes but accelerate sees {state.num_processes} (its distributed "
            f"type is {state.distributed_type}); launch with `accelerate launch --multi_gpu --num_processes N`")
    return state


def process_device(device: str | None, state: PartialState) -> str | None:
    """This process's device: with several CUDA processes, accelerate's choice (``cuda:<local process index>``, one
    GPU each) unless ``device`` names a GPU; otherwise ``device`` itself."""
    if state.num_processes > 1 and state.device.type == "cuda" and device in (None, "cuda"):
        return str(state.device)
    return device


def process_share(jobs: Sequence[BatchJob], state: PartialState) -> list[BatchJob]:
    """This process's jobs: a contiguous share of ``jobs`` (the first processes take one more when they do not
    divide evenly)."""
    with state.split_between_processes(list(jobs)) as share:
        return list(share)


def gather_results(results: Sequence[JobResult], state: PartialState) -> list[JobResult]:
    """Every process's results on every process, in job order (each process must call it)."""
    if state.num_processes == 1:
        return list(results)
    from accelerate.utils import gather_object  # deferred: see batch_processes

    return gather_object(list(results))


# ---------------------------------------------------------------------------------------------------- results
def summary_table(results: Sequence[JobResult]) -> str:
    """Markdown table of the jobs (one row each) and a count per status."""
    several = any(r.process for r in results)  # a process column when several processes shared the batch
    lines = ["| video | audio | output | status | seconds | frames | without face | error |" + (" process |" * several),
             "|---|---|---|---|---|---|---|---|" + ("---|" * several)]
    for r in results:
        cells = [os.path.basename(r.video), os.path.basename(r.audio), r.output, r.status,
                 f"{r.seconds:.1f}" if r.status == "done" else "", r.num_frames if r.num_frames is not None else "",
                 r.frames_without_face if r.frames_without_face is not None else "",
                 (r.error or "").replace("|", "\\|").replace("\n", " ")] + [r.process] * several
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    counts = ", ".join(f"{sum(r.status == s for r in results)} {s}" for s in STATUSES)
    processes = f" on {len({r.process for r in results})} processes" if several else ""
    return "\n".join(lines) + f"\n\n{len(results)} jobs{processes}: {counts}\n"


def write_results(results: Sequence[JobResult], output_dir: str | os.PathLike) -> tuple[str, str]:
    """Write ``batch_results.csv`` (one row per job) and ``batch_summary.md`` in ``output_dir``; returns both paths.

    The CSV is UTF-8 with a BOM (as Excel's "CSV UTF-8"), so that Excel shows names outside ASCII as they are
    (without it, Excel on Windows reads the file in the system's code page); pandas' ``read_csv`` and
    [`read_jobs`] skip the BOM, and so does Python's ``csv`` module with ``encoding="utf-8-sig"``."""
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, RESULTS_CSV)
    with open(csv_path, "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(JobResult.__dataclass_fields__))
        writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))
    md_path = os.path.join(output_dir, RESULTS_MD)
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write("# Batch results\n\n" + summary_table(results))
    return csv_path, md_path
