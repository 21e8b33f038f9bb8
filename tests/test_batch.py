"""``latentsync batch``: three video/audio pairs with one broken give two results and one clear error, with one
model load; a second run skips the finished outputs; CSV job lists and their errors; two processes under
``accelerate launch`` share the jobs and write one table."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ffmpeg
from latentsync.batch import BatchJob, BatchListError, read_jobs, run_batch, write_results
from latentsync.commands import main
from latentsync.errors import InvalidOutputError, InvalidVideoError
from latentsync.media.video import check_output_path


@pytest.fixture
def pairs(tmp_path, example_face, example_speech):
    """a and b: the example face with 0.64 s of speech; c: a video file that is not a video."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in ("a", "b"):
        shutil.copy(example_face, folder / f"{name}.mp4")
        ffmpeg("-i", os.fspath(example_speech), "-t", "0.64", os.fspath(folder / f"{name}.wav"))
    (folder / "c.mp4").write_bytes(b"not a video at all" * 100)
    shutil.copy(folder / "a.wav", folder / "c.wav")
    return folder


def _rows(path):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return {os.path.basename(r["video"]): r for r in csv.DictReader(fh)}


def test_three_pairs_one_broken_give_two_results_and_one_clear_error(pairs, tmp_path, monkeypatch):
    from latentsync.pipeline import LatentSyncPipeline
    from latentsync.testing import build_tiny_pipeline

    model = tmp_path / "tiny-64"
    build_tiny_pipeline(resolution=64).save_pretrained(model)  # 64 px faces: quick on a CPU

    loads = []
    original = LatentSyncPipeline.from_pretrained.__func__
    monkeypatch.setattr(LatentSyncPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k)))
    out = tmp_path / "out"
    argv = ["batch", os.fspath(pairs), os.fspath(out), "--model", os.fspath(model), "--steps", "1",
            "--device", "cpu"]
    assert main(argv) == 1  # a job failed
    assert len(loads) == 1  # one model load for the whole batch
    assert sorted(p for p in os.listdir(out) if p.endswith(".mp4")) == ["a.mp4", "b.mp4"]
    rows = _rows(out / "batch_results.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"a.mp4": "done", "b.mp4": "done", "c.mp4": "failed"}
    assert rows["a.mp4"]["num_frames"] == "16" and rows["a.mp4"]["error"] == ""
    error = rows["c.mp4"]["error"]
    assert "c.mp4" in error and "Traceback" not in error and len(error.splitlines()) == 1
    summary = (out / "batch_summary.md").read_text()
    assert "3 jobs: 2 done, 0 skipped, 1 failed" in summary and "| c.mp4 |" in summary
    first_a = (out / "a.mp4").stat().st_mtime_ns

    # resumed: the finished outputs are kept and skipped, the broken job is tried again
    assert main(argv) == 1
    rows = _rows(out / "batch_results.csv")
    assert {k: r["status"] for k, r in rows.items()} == {"a.mp4": "skipped", "b.mp4": "skipped", "c.mp4": "failed"}
    assert (out / "a.mp4").stat().st_mtime_ns == first_a


def test_csv_job_lists(tmp_path):
    (tmp_path / "v").mkdir()
    jobs_csv = tmp_path / "jobs.csv"
    jobs_csv.write_text("video,audio,output\nv/one.mp4,speech.wav,\nv/two.mov,other.wav,custom/name.mkv\n\n")
    jobs = read_jobs(jobs_csv, tmp_path / "out")
    assert [(os.path.relpath(j.video, tmp_path), os.path.relpath(j.audio, tmp_path),
             os.path.relpath(j.output, tmp_path)) for j in jobs] == [
        ("v/one.mp4", "speech.wav", "out/one.mp4"), ("v/two.mov", "other.wav", "out/custom/name.mkv")]

    (tmp_path / "bad.csv").write_text("clip,speech\na.mp4,a.wav\n")
    with pytest.raises(BatchListError, match="no video or audio column"):
        read_jobs(tmp_path / "bad.csv", tmp_path / "out")
    (tmp_path / "dup.csv").write_text("video,audio\nx/a.mp4,1.wav\ny/a.mp4,2.wav\n")
    with pytest.raises(BatchListError, match="two jobs write"):
        read_jobs(tmp_path / "dup.csv", tmp_path / "out")
    with pytest.raises(BatchListError, match="job list not found"):
        read_jobs(tmp_path / "missing.csv", tmp_path / "out")
    assert main(["batch", os.fspath(tmp_path / "missing.csv"), os.fspath(tmp_path / "out")]) == 2  # one clear line


def test_csv_job_lists_in_other_encodings(tmp_path, example_face):
    """Excel's "CSV UTF-8" (with a BOM) is read; Latin-1, UTF-16 and a video given as the job list are one clear
    line (exit status 2), never a UnicodeDecodeError."""
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfvideo,audio\nv.mp4,a.wav\n")
    assert [os.path.basename(j.video) for j in read_jobs(tmp_path / "bom.csv", tmp_path / "out")] == ["v.mp4"]

    (tmp_path / "latin1.csv").write_bytes("video,audio\ncafé.mp4,a.wav\n".encode("latin-1"))
    (tmp_path / "utf16.csv").write_text("video,audio\nv.mp4,a.wav\n", encoding="utf-16")
    (tmp_path / "utf16le.csv").write_text("video,audio\nv.mp4,a.wav\n", encoding="utf-16-le")  # no BOM
    for name in ("latin1.csv", "utf16.csv", "utf16le.csv"):
        with pytest.raises(BatchListError, match=f"cannot read job list .*{name}: not a UTF-8 text CSV"):
            read_jobs(tmp_path / name, tmp_path / "out")
    with pytest.raises(BatchListError, match="not a UTF-8 text CSV .it is a video"):
        read_jobs(example_face, tmp_path / "out")
    assert main(["batch", os.fspath(example_face), os.fspath(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_csv_rows_without_video_or_audio_name_the_row(tmp_path):
    (tmp_path / "jobs.csv").write_text("video,audio\nv.mp4,a.wav\nw.mp4,\n")
    with pytest.raises(BatchListError, match="jobs.csv row 3 has no audio"):
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out")
    (tmp_path / "jobs.csv").write_text("video,audio\n ,a.wav\n")
    with pytest.raises(BatchListError, match="jobs.csv row 2 has no video"):
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out")


def test_a_job_may_not_write_another_jobs_input(tmp_path, caplog):
    """A CSV whose first job writes the second job's video (here through the output column) is refused as a whole,
    before the model loads: the video would be replaced by the first job, or with it existing the first job would
    be "skipped" as already done."""
    (tmp_path / "a.mp4").write_bytes(b"first video")
    (tmp_path / "b.mp4").write_bytes(b"second video")
    (tmp_path / "s.wav").write_bytes(b"speech")
    (tmp_path / "jobs.csv").write_text(f"video,audio,output\na.mp4,s.wav,{tmp_path / 'b.mp4'}\nb.mp4,s.wav,\n")
    with pytest.raises(BatchListError, match=r"the output of the job of .*a\.mp4 is .*b\.mp4, which another job "
                                             r"reads \(.*b\.mp4\)"):
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out")
    assert main(["batch", os.fspath(tmp_path / "jobs.csv"), os.fspath(tmp_path / "out"), "--overwrite"]) == 2
    assert (tmp_path / "b.mp4").read_bytes() == b"second video" and not (tmp_path / "out").exists()


def test_csv_outputs_in_a_relative_output_folder(tmp_path, monkeypatch):
    """A relative output folder holds the default outputs and the output column's (not out/out/...)."""
    (tmp_path / "jobs.csv").write_text("video,audio,output\nv/one.mp4,a.wav,\nv/two.mp4,a.wav,sub/2.mkv\n")
    monkeypatch.chdir(tmp_path)
    assert [j.output for j in read_jobs("jobs.csv", "out")] == [os.path.join("out", "one.mp4"),
                                                                 os.path.join("out", "sub", "2.mkv")]


def test_output_folder_that_is_a_file_or_the_input_folder_is_refused_before_the_model_loads(tmp_path, pairs,
                                                                                             caplog):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(InvalidOutputError, match="output folder .*taken is a file"):
        read_jobs(pairs, tmp_path / "taken")
    with pytest.raises(InvalidOutputError, match="taken is a file"):
        read_jobs(pairs, tmp_path / "taken" / "deeper")
    with pytest.raises(InvalidOutputError, match="is the input folder"):
        read_jobs(pairs, os.fspath(pairs) + "/.")
    before = sorted(os.listdir(pairs))
    model = os.fspath(tmp_path / "no-model")  # never reached: the output folder is checked first
    assert main(["batch", os.fspath(pairs), os.fspath(tmp_path / "taken"), "--model", model]) == 2
    assert "taken is a file" in caplog.text and "model folder not found" not in caplog.text
    assert main(["batch", os.fspath(pairs), os.fspath(pairs), "--model", model]) == 2
    assert "is the input folder" in caplog.text and "model folder not found" not in caplog.text
    assert sorted(os.listdir(pairs)) == before  # no results table among the inputs


class _FakePipeline:
    """Stands in for the pipeline: checks the output path as its call does, fails for ``broken`` videos, writes the
    rest."""

    def __init__(self):
        self.calls = []

    def __call__(self, video, audio, output_path, **kwargs):
        self.calls.append(os.path.basename(output_path))
        check_output_path(output_path, (video, audio))
        if "broken" in video:
            raise InvalidVideoError(f"cannot read video {video}")
        with open(output_path, "wb") as fh:
            fh.write(b"synced")
        return type("Output", (), {"num_frames": 16, "frames_without_face": 0})()


def test_a_job_list_chooses_each_jobs_audio_track(tmp_path):
    """An ``audio_track`` column (numbered from 1, as the log names tracks) chooses a job's speech track; an empty
    cell leaves the run's choice (``--audio-track`` or the automatic one); a cell that is no track number names its
    row."""
    (tmp_path / "jobs.csv").write_text("video,audio,audio_track\na.mp4,obs.mp4,2\nb.mp4,b.wav,\n")
    jobs = read_jobs(tmp_path / "jobs.csv", tmp_path / "out")
    assert [j.audio_track for j in jobs] == [2, None]
    for name in ("a.mp4", "obs.mp4", "b.mp4", "b.wav"):
        (tmp_path / name).write_bytes(b"input")
    calls = {}

    def pipe(video, audio, output_path, **kwargs):
        calls[os.path.basename(video)] = kwargs.get("audio_track")
        return type("Output", (), {"num_frames": 16, "frames_without_face": 0})()

    results = run_batch(pipe, jobs, progress=False, audio_track=1)
    assert calls == {"a.mp4": 2, "b.mp4": 1}
    write_results(results, tmp_path / "out")
    with open(tmp_path / "out" / "batch_results.csv", newline="", encoding="utf-8-sig") as fh:
        assert [r["audio_track"] for r in csv.DictReader(fh)] == ["2", "1"]  # the results say which track was used
    calls.clear()
    assert [r.audio_track for r in run_batch(pipe, jobs, progress=False, overwrite=True)] == [2, None]
    assert calls == {"a.mp4": 2, "b.mp4": None}
    (tmp_path / "bad.csv").write_text("video,audio,audio_track\na.mp4,obs.mp4,0\n")
    with pytest.raises(BatchListError, match="row 2: audio_track '0' is not an audio track number"):
        read_jobs(tmp_path / "bad.csv", tmp_path / "out")


def test_jobs_whose_output_is_an_input_or_wrong_fail_and_leave_no_folder(tmp_path):
    """An output that is the job's video or audio fails as in a single run (it is not a finished output to skip), and
    is never written; a job that fails its checks leaves no new output folder behind."""
    for name in ("talk.mp4", "talk.wav", "voice.mp4", "broken.mp4"):
        (tmp_path / name).write_bytes(b"input " + name.encode())
    # built in Python (read_jobs refuses such a list as a whole: see the next test); run_batch checks each job again
    talk, wav, voice, out = (os.fspath(tmp_path / n) for n in ("talk.mp4", "talk.wav", "voice.mp4", "out"))
    jobs = [BatchJob(talk, wav, talk),  # the video itself
            BatchJob(talk, voice, voice),  # the audio (speech in an .mp4)
            BatchJob(talk, wav, os.path.join(out, "sub", "wrong.avi")),
            BatchJob(os.fspath(tmp_path / "broken.mp4"), wav, os.path.join(out, "new", "deeper", "broken.mp4")),
            BatchJob(talk, wav, os.path.join(out, "made", "talk.mp4"))]
    pipe = _FakePipeline()
    for overwrite in (False, True):
        results = run_batch(pipe, jobs, overwrite=overwrite, progress=False)
        assert [r.status for r in results] == ["failed", "failed", "failed", "failed", "done"]
        assert "is the input file" in results[0].error and "choose another output path" in results[0].error
        assert "is the input file" in results[1].error and "voice.mp4" in results[1].error
        assert "unsupported output format .avi" in results[2].error
        assert "cannot read video" in results[3].error
    assert pipe.calls == ["broken.mp4", "talk.mp4"] * 2  # the bad outputs never reach the pipeline
    for name in ("talk.mp4", "voice.mp4"):
        assert (tmp_path / name).read_bytes() == b"input " + name.encode()
    assert sorted(os.listdir(tmp_path / "out")) == ["made"]  # no sub/ nor new/deeper/
    assert (tmp_path / "out" / "made" / "talk.mp4").read_bytes() == b"synced"


def test_outputs_that_cannot_be_written_are_refused_before_the_model_loads_all_rows_at_once(tmp_path, caplog):
    """Outputs the writer cannot write (.txt, .wav, .gif, no extension, a folder) or that are one of the job's
    inputs refuse the whole list at once, each named by its row, before the model loads (they used to fail one by
    one after it had loaded); nothing is created."""
    for name in ("talk.mp4", "talk.wav"):
        (tmp_path / name).write_bytes(b"input " + name.encode())
    (tmp_path / "out" / "a-folder.mp4").mkdir(parents=True)
    (tmp_path / "jobs.csv").write_text(
        "video,audio,output\n"
        "talk.mp4,talk.wav,notes.txt\n"  # row 2
        "talk.mp4,talk.wav,fine.mp4\n"
        "talk.mp4,talk.wav,sub/speech.wav\n"  # row 4
        "talk.mp4,talk.wav,anim.GIF\n"  # row 5
        "talk.mp4,talk.wav,no_extension\n"  # row 6
        f"talk.mp4,talk.wav,{tmp_path / 'talk.mp4'}\n"  # row 7: its own video
        "talk.mp4,talk.wav,a-folder.mp4\n")  # row 8
    with pytest.raises(BatchListError) as caught:
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out")
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{tmp_path / 'jobs.csv'}: 6 jobs cannot write")
    for row, problem in ((2, "unsupported output format .txt"), (4, "unsupported output format .wav"),
                         (5, "unsupported output format .gif"), (6, r"unsupported output format \(no extension\)"),
                         (7, r"output \S*talk.mp4 is the input file"), (8, "output path is a folder")):
        assert re.search(f"row {row}: {problem}", message), (row, message)
    assert "row 3" not in message
    model = os.fspath(tmp_path / "no-model")  # never reached
    assert main(["batch", os.fspath(tmp_path / "jobs.csv"), os.fspath(tmp_path / "out"), "--model", model]) == 2
    assert "6 jobs cannot write their output" in caplog.text and "model folder not found" not in caplog.text
    assert sorted(os.listdir(tmp_path / "out")) == ["a-folder.mp4"]
    assert (tmp_path / "talk.mp4").read_bytes() == b"input talk.mp4"

    (tmp_path / "one.csv").write_text("video,audio,output\ntalk.mp4,talk.wav,x.txt\n")
    with pytest.raises(BatchListError, match=r"one.csv: a job cannot write its output: row 2: unsupported output "
                                             r"format .txt: .*x.txt \(use one of .mp4, .mov, .mkv\)$"):
        read_jobs(tmp_path / "one.csv", tmp_path / "out")


def test_output_folder_that_cannot_be_written_is_one_line(tmp_path, pairs):
    """Not one "not writable" per job: the output folder is checked once."""
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and os.geteuid() != 0:
        pytest.skip("no unwritable folder to test with")
    with pytest.raises(InvalidOutputError, match=r"^output folder is not writable: /sys/latentsync-batch-out \("):
        read_jobs(pairs, "/sys/latentsync-batch-out")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batch_under_accelerate_launch_shares_the_jobs_between_two_processes(tmp_path, tiny_model_dir_64,
                                                                            example_face, example_speech):
    """Two CPU processes (gloo), four jobs, a tiny model saved to disk and loaded back by each process: every output
    is written once, each process runs two jobs, the main process writes one table of all four. A fifth, broken job
    (on the second process) makes every process exit with 1, and the finished outputs are skipped."""
    model = tiny_model_dir_64
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name in "abcd":
        shutil.copy(example_face, folder / f"{name}.mp4")
        ffmpeg("-i", os.fspath(example_speech), "-t", "0.64", os.fspath(folder / f"{name}.wav"))
    out = tmp_path / "out"

    def launch() -> subprocess.CompletedProcess:
        """The batch under accelerate launch (a fresh rendezvous port each time)."""
        return subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", str(_free_port()), "-m", "latentsync", "batch", os.fspath(folder),
             os.fspath(out), "--model", os.fspath(model), "--steps", "1", "--device", "cpu"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)

    proc = launch()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p for p in os.listdir(out) if p.endswith(".mp4")) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    with open(out / "batch_results.csv", newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert [(os.path.basename(r["video"]), r["status"], r["process"]) for r in rows] == [
        ("a.mp4", "done", "0"), ("b.mp4", "done", "0"), ("c.mp4", "done", "1"), ("d.mp4", "done", "1")]
    assert "process 0 of 2: 2 of the 4 jobs" in proc.stderr and "process 1 of 2: 2 of the 4 jobs" in proc.stderr
    assert proc.stderr.count("wrote " + os.fspath(out / "batch_results.csv")) == 1  # by the main process only
    assert "4 jobs on 2 processes: 4 done, 0 skipped, 0 failed" in (out / "batch_summary.md").read_text()
    written = {name: (out / name).stat().st_mtime_ns for name in ("a.mp4", "d.mp4")}

    (folder / "e.mp4").write_bytes(b"not a video at all" * 100)
    shutil.copy(folder / "a.wav", folder / "e.wav")
    proc = launch()
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = _rows(out / "batch_results.csv")
    assert {k: (r["status"], r["process"]) for k, r in rows.items()} == {
        "a.mp4": ("skipped", "0"), "b.mp4": ("skipped", "0"), "c.mp4": ("skipped", "0"), "d.mp4": ("skipped", "1"),
        "e.mp4": ("failed", "1")}
    assert "e.mp4" in rows["e.mp4"]["error"]
    assert "5 jobs on 2 processes: 0 done, 4 skipped, 1 failed" in (out / "batch_summary.md").read_text()
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written


def test_csv_job_lists_as_spreadsheets_save_them(tmp_path):
    """Semicolons (Excel where the comma is the decimal mark), tabs, Windows line endings with a BOM, a capitalised
    header in another order: the same job."""
    lists = {
        "semicolon.csv": b"\xef\xbb\xbfvideo;audio;output\r\nclip.mp4;speech.wav;done.mkv\r\n",
        "tab.csv": b"video\taudio\toutput\nclip.mp4\tspeech.wav\tdone.mkv\n",
        "caps.csv": b"Output,Audio,VIDEO\r\ndone.mkv,speech.wav,clip.mp4\r\n\r\n",
    }
    for name, data in lists.items():
        (tmp_path / name).write_bytes(data)
        jobs = read_jobs(tmp_path / name, tmp_path / "out")
        assert [(os.path.relpath(j.video, tmp_path), os.path.relpath(j.audio, tmp_path),
                 os.path.relpath(j.output, tmp_path)) for j in jobs] == [
            ("clip.mp4", "speech.wav", os.path.join("out", "done.mkv"))], name


def test_csv_rows_that_would_be_misread_are_refused(tmp_path, caplog):
    """An unquoted comma in a path (the row has more fields than the header), a column named twice, a list without
    a header, JSON lines, an empty file and a header without rows: one line each, before the model loads. Columns
    that are not read (a misspelt output, per-job options) are named in a warning."""
    cases = {
        "comma.csv": ("video,audio\nmy clip, take 2.mp4,a.wav\n",
                      (r"comma.csv row 2 has 3 fields but the header has 2: a path with a comma in it must be in "
                       r"double quotes")),
        "twice.csv": ("video,audio,video\na.mp4,a.wav,b.mp4\n", r"twice.csv: column video appears twice"),
        "headless.csv": ("a.mp4,a.wav\n", (r"headless.csv has no video or audio column \(found: a.mp4, a.wav\); "
                                           r"the first line of a CSV job list names its columns: video,audio")),
        "jobs.jsonl": ('{"video": "a.mp4", "audio": "a.wav"}\n', r"it is JSON, not CSV; the first line"),
        "empty.csv": ("", r"job list .*empty.csv is empty; the first line"),
        "header.csv": ("video,audio\n\n", r"no jobs in .*header.csv: it has a header but no rows"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BatchListError, match=message):
            read_jobs(tmp_path / name, tmp_path / "out")
    (tmp_path / "ok.csv").write_text('video,audio,ouput,steps\n"my clip, take 2.mp4",a.wav,b.mp4,10\n')
    assert [os.path.basename(j.output) for j in read_jobs(tmp_path / "ok.csv", tmp_path / "out")] == [
        "my clip, take 2.mp4"]
    assert "ok.csv: columns ouput, steps ignored (a job list reads video, audio, output" in caplog.text
    assert main(["batch", os.fspath(tmp_path / "header.csv"), os.fspath(tmp_path / "out"), "--model",
                 os.fspath(tmp_path / "no-model")]) == 2
    assert "no jobs in" in caplog.text and "model folder not found" not in caplog.text


def test_two_jobs_writing_one_file_are_named_by_their_rows_or_videos(tmp_path):
    (tmp_path / "jobs.csv").write_text("video,audio\nhost.mp4,episode1.wav\nhost.mp4,episode2.wav\n")
    with pytest.raises(BatchListError, match=r"two jobs write .*host.mp4: row 2 and row 3 of .*jobs.csv \(give each "
                                             r"its own name in an output column\)"):
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out")
    (tmp_path / "videos").mkdir()
    for name in ("talk.mp4", "talk.MOV"):
        (tmp_path / "videos" / name).write_bytes(b"video")
    with pytest.raises(BatchListError, match=r"two jobs write .*talk.mp4: talk.MOV and talk.mp4 in .*videos \(videos "
                                             r"of the same name in two formats; rename one\)"):
        read_jobs(tmp_path / "videos", tmp_path / "out")


def test_csv_paths_relative_to_the_current_folder_or_the_home_folder(tmp_path, monkeypatch):
    """A list in lists/ that names clips/a.mp4 from the current folder (where it is) rather than from its own (where
    it is not) is refused with the rule; ``~`` is the home folder, as in a shell."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"video")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "jobs.csv").write_text("video,audio\nclips/a.mp4,clips/a.wav\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BatchListError, match=r"jobs.csv row 2: clips/a.mp4 is not in the job list's folder .*lists "
                                             r"but in the current folder: relative paths in a job list are relative "
                                             r"to its folder"):
        read_jobs("lists/jobs.csv", "out")
    monkeypatch.setenv("HOME", os.fspath(tmp_path))
    (tmp_path / "lists" / "jobs.csv").write_text("video,audio,output\n~/clips/a.mp4,a.wav,~/done/a.mp4\n")
    [job] = read_jobs("lists/jobs.csv", "out")
    assert (job.video, job.audio, job.output) == (os.fspath(tmp_path / "clips" / "a.mp4"),
                                                  os.fspath(tmp_path / "lists" / "a.wav"),
                                                  os.fspath(tmp_path / "done" / "a.mp4"))


def test_audio_folder_that_is_missing_or_given_with_a_csv_is_one_line(tmp_path, pairs, caplog):
    for audio_dir, message in ((tmp_path / "no-speech", "audio folder not found: .*no-speech"),
                               (pairs / "a.wav", "audio folder is a file: .*a.wav")):
        with pytest.raises(BatchListError, match=message):
            read_jobs(pairs, tmp_path / "out", audio_dir)
    (tmp_path / "jobs.csv").write_text("video,audio\na.mp4,a.wav\n")
    with pytest.raises(BatchListError, match=r"an audio folder \(--audio-dir .*speech\) goes with a folder of "
                                             r"videos; the job list .*jobs.csv names each job's audio"):
        read_jobs(tmp_path / "jobs.csv", tmp_path / "out", tmp_path / "speech")
    argv = ["batch", os.fspath(pairs), os.fspath(tmp_path / "out"), "--audio-dir", os.fspath(tmp_path / "no-speech")]
    assert main(argv) == 2 and "audio folder not found" in caplog.text


def test_ctrl_c_keeps_the_finished_outputs_and_says_so(tmp_path, pairs, monkeypatch, caplog):
    """Ctrl-C during the second of three jobs: exit status 130, the first output kept, nothing of the second, and a
    line that says how many outputs are written and that the same command resumes (not "nothing was written")."""
    from latentsync.commands import batch as batch_command
    from latentsync.errors import RunInterrupted

    class Stopped(_FakePipeline):
        def __call__(self, video, audio, output_path, **kwargs):
            if os.path.basename(video) == "b.mp4":
                raise RunInterrupted(signal.SIGINT)
            return super().__call__(video, audio, output_path, **kwargs)

        def set_progress_bar_config(self, **kwargs):
            pass

    monkeypatch.setattr(batch_command, "check_model_options", lambda args: type("Source", (), {
        "local_files_only": False})())
    monkeypatch.setattr(batch_command, "load_pipeline", lambda args, local_files_only: Stopped())
    out = tmp_path / "out"
    assert main(["batch", os.fspath(pairs), os.fspath(out), "--device", "cpu"]) == 130
    assert sorted(os.listdir(out)) == ["a.mp4"]
    assert "stopped by Ctrl-C: 1 of the 3 outputs are written and kept" in caplog.text
    assert "the same command resumes" in caplog.text and "nothing was written" not in caplog.text


def test_results_table_opens_in_excel_and_pandas_with_names_outside_ascii(tmp_path):
    """batch_results.csv starts with the UTF-8 BOM (Excel on Windows reads a CSV without it in the system's code
    page: "cafÃ©"); pandas reads it with its first column named ``video``, and it reads back as a job list (e.g. to
    rerun the failed jobs)."""
    import pandas as pd

    from latentsync.batch import JobResult, write_results

    name = "café — 東京"
    for ext in (".mp4", ".wav"):
        (tmp_path / f"{name}{ext}").write_bytes(b"input")
    results = [JobResult(os.fspath(tmp_path / f"{name}.mp4"), os.fspath(tmp_path / f"{name}.wav"),
                         os.fspath(tmp_path / "out" / f"{name}.mp4"), "failed", error=f"cannot read video {name}")]
    csv_path, md_path = write_results(results, tmp_path / "out")
    assert Path(csv_path).read_bytes().startswith(b"\xef\xbb\xbfvideo,audio,output,status")
    table = pd.read_csv(csv_path)
    assert list(table.columns[:4]) == ["video", "audio", "output", "status"]
    assert table.loc[0, "video"] == results[0].video and table.loc[0, "error"] == f"cannot read video {name}"
    assert name in Path(md_path).read_text(encoding="utf-8")
    jobs = read_jobs(csv_path, tmp_path / "again")
    assert [(j.video, j.audio, j.output) for j in jobs] == [(r.video, r.audio, r.output) for r in results]


def test_ctrl_c_while_waiting_for_the_other_processes_keeps_the_outputs_and_says_so(tmp_path, pairs, monkeypatch,
                                                                                     caplog):
    """Under accelerate launch a process whose jobs are done waits for the others (to gather the results); Ctrl-C
    then said "nothing was written" although its outputs are written and kept."""
    from latentsync.commands import batch as batch_command
    from latentsync.errors import RunInterrupted

    class Fake(_FakePipeline):
        def set_progress_bar_config(self, **kwargs):
            pass

    def gather(results, state):
        raise RunInterrupted(signal.SIGINT)  # as when the signal comes while gather_object waits

    monkeypatch.setattr(batch_command, "check_model_options", lambda args: type("Source", (), {
        "local_files_only": False})())
    monkeypatch.setattr(batch_command, "load_pipeline", lambda args, local_files_only: Fake())
    monkeypatch.setattr(batch_command, "gather_results", gather)
    (pairs / "c.mp4").unlink()
    out = tmp_path / "out"
    assert main(["batch", os.fspath(pairs), os.fspath(out), "--device", "cpu"]) == 130
    assert sorted(os.listdir(out)) == ["a.mp4", "b.mp4"]
    assert "stopped by Ctrl-C: 2 of the 2 outputs are written and kept (its jobs were done); the same command " \
           "resumes" in caplog.text and "nothing was written" not in caplog.text


def test_names_in_either_unicode_form_are_found(tmp_path):
    """Clips named on macOS (decomposed é) listed in a CSV typed elsewhere (composed é), and paired with speech named
    in the composed form: the files are found, not failed as missing after the model loads."""
    import unicodedata

    nfd, nfc = (unicodedata.normalize(form, "café") for form in ("NFD", "NFC"))
    (tmp_path / "videos").mkdir()
    (tmp_path / "speech").mkdir()
    (tmp_path / "videos" / f"{nfd}.mp4").write_bytes(b"video")
    (tmp_path / "speech" / f"{nfc}.wav").write_bytes(b"speech")
    (tmp_path / "jobs.csv").write_text(f"video,audio\nvideos/{nfc}.mp4,speech/{nfd}.wav\n", encoding="utf-8")
    for jobs in (read_jobs(tmp_path / "jobs.csv", tmp_path / "out"),
                 read_jobs(tmp_path / "videos", tmp_path / "out", tmp_path / "speech")):
        assert len(jobs) == 1 and os.path.isfile(jobs[0].video) and os.path.isfile(jobs[0].audio)


def test_folder_pairs_with_speech_from_apple_windows_and_phone_recorders(tmp_path):
    """Speech saved as AIFF or CAF (Apple), WMA (Windows) or AMR (a phone's voice memo) beside its video is that
    video's pair: it was not looked for, so the job failed with "audio file not found: talk.wav" while talk.aiff
    lay beside talk.mp4."""
    endings = (".aif", ".aiff", ".caf", ".wma", ".amr", ".oga")
    for i, ending in enumerate(endings):
        (tmp_path / f"talk{i}.mp4").write_bytes(b"video")
        (tmp_path / f"talk{i}{ending}").write_bytes(b"speech")
    jobs = read_jobs(tmp_path, tmp_path / "out")
    assert [os.path.basename(job.audio) for job in jobs] == [f"talk{i}{e}" for i, e in enumerate(endings)]


def test_folder_pairs_take_an_animated_gif_as_the_face_video(tmp_path):
    """``latentsync run`` takes a GIF as its face video, but a batch's folder of pairs ignored ``talk.gif`` beside
    ``talk.wav`` ("no video files in ..."). GIF, a picture without sound, is still no video for data preparation,
    evaluation and training clips, which need the file's own sound."""
    import subprocess

    import imageio_ffmpeg

    from latentsync.media import VIDEO_EXTENSIONS, find_videos, is_video_file, probe_video

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=32x32:rate=10:duration=0.3", os.fspath(tmp_path / "talk.gif")], check=True)
    assert probe_video(tmp_path / "talk.gif").width == 32  # a video, as a run reads it
    (tmp_path / "talk.wav").write_bytes(b"speech")
    (tmp_path / ".hidden.gif").write_bytes(b"gif")
    [job] = read_jobs(tmp_path, tmp_path / "out")
    assert os.path.basename(job.video) == "talk.gif" and os.path.basename(job.audio) == "talk.wav"
    assert job.output == os.path.join(os.fspath(tmp_path / "out"), "talk.mp4")
    assert ".gif" not in VIDEO_EXTENSIONS and find_videos(tmp_path) == [] and not is_video_file("talk.GIF")
    assert is_video_file("talk.GIF", silent=True)
