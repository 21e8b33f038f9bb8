"""``latentsync faces VIDEO``: list the face tracks of a video and draw them on a contact sheet.

Each track is one face followed through one shot; its number is what ``--face INDEX`` and
``--audio-for FACE[:TRACK]=FILE`` of the lip-sync command (and ``face_index`` / an ``audio`` mapping in Python) refer
to. With ``--speaking`` every track is also scored against the video's own soundtrack, and the face that speaks in
each shot is named.

The options, the video and the output paths are checked before torch and the face tracker load (``--help`` and bad
input answer in a fraction of a second).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from tqdm.auto import tqdm

from ..devices import default_device
from ..errors import InvalidOutputError
from ..media.audio import AUTOMATIC_TRACK, chosen_track
from ..media.constants import VIDEO_FPS
from ..media.files import check_side_output, same_file
from ..media.video import open_frames
from ..model_source import check_model_sources, loading
from ..tempfiles import write_atomically
from .run import track_number

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentsync faces", description="List the face tracks of a video and write a "
                                "contact sheet of them.")
    p.add_argument("video", help="input video")
    p.add_argument("--sheet", default=None,
                   help="contact sheet PNG to write (default: <video name>_faces.png in the current folder)")
    p.add_argument("--json", default=None, help="also write every track's frames and boxes to this JSON file")
    p.add_argument("--speaking", action="store_true",
                   help="score every face against the video's soundtrack and name the speaker of each shot")
    p.add_argument("--syncnet", default=None,
                   help="with --speaking: a StableSyncNet (folder, Hub id or stable_syncnet.pt) to score with "
                        "instead of lip motion")
    p.add_argument("--audio-track", type=track_number, default=None, metavar="N",
                   help="with --speaking: the video's audio track to score against, numbered from 1 as the log and "
                        "players number them (default: the track with the speech: "
                        f"{AUTOMATIC_TRACK})")
    p.add_argument("--device", default=None, help="device of the SyncNet (default: best available)")
    return p


def faces(argv: list[str]) -> int:
    """Find the face tracks of one video; log them, write the contact sheet (and JSON), optionally who speaks."""
    p = parser()
    args = p.parse_args(argv)
    if args.syncnet and not args.speaking:
        p.error("--syncnet scores the faces for --speaking: add --speaking")
    if args.audio_track is not None and not args.speaking:
        p.error("--audio-track chooses the soundtrack that --speaking scores the faces against: add --speaking")
    # everything that can be wrong is found before the faces are tracked (seconds to minutes)
    source = open_frames(args.video, VIDEO_FPS)
    sound_track = chosen_track(args.video, args.audio_track, "--audio-track")
    sheet = args.sheet or f"{os.path.splitext(os.path.basename(args.video))[0]}_faces.png"
    check_side_output(sheet, [args.video], "--sheet")
    if args.json:
        check_side_output(args.json, [args.video], "--json")
        if same_file(args.json, sheet):
            raise InvalidOutputError(f"--json and the contact sheet are the same file ({sheet}): give two paths")
    check_model_sources({"--syncnet": args.syncnet})
    # deferred: the tracker imports torch (seconds); everything above is checked without it
    tracks = importlib.import_module("latentsync.face.tracking").track_faces(source, source.label, _progress,
                                                                             source.expected_frames)
    for line in tracks.describe().splitlines():
        logger.info("%s", line)
    picture = tracks.contact_sheet()
    write_atomically(sheet, lambda partial: picture.save(partial, format="PNG"))
    logger.info("contact sheet: %s", sheet)
    record = tracks.to_dict()
    if args.speaking and len(tracks):
        import torch  # deferred: loaded by the tracker above already; imported here for no_grad

        # deferred: the face choice and the SyncNet loader import diffusers and transformers (seconds)
        choose_faces = importlib.import_module("latentsync.face.selection").choose_faces
        syncnet = None
        if args.syncnet:
            load_syncnet = importlib.import_module("latentsync.loaders.official").load_syncnet
            with loading("--syncnet", args.syncnet):
                syncnet = load_syncnet(args.syncnet).to(args.device or default_device()).eval()
        with torch.no_grad():
            selection = choose_faces(tracks, source, face="speaking", syncnet=syncnet, progress=_progress,
                                     sound_track=sound_track)
        for shot in selection.shots:
            scores = ", ".join(f"face {k}: {'-' if v is None else f'{v:.3f}'}" for k, v in shot.scores.items())
            logger.info("shot %d (frames %d-%d): face %s (%s); scores %s", shot.shot, shot.start, shot.end - 1,
                        shot.track, shot.rule, scores or "-")
        record["speaking"] = [{"shot": s.shot, "track": s.track, "rule": s.rule, "scores": s.scores}
                              for s in selection.shots]
    if args.json:
        # deferred: latentsync.utils imports torch (loaded by the tracker above already)
        importlib.import_module("latentsync.utils").write_json_atomically(args.json, record)
        logger.info("tracks: %s", args.json)
    return 0


def _progress(iterable, desc: str, total: int | None = None) -> tqdm:
    return tqdm(iterable, desc=desc, total=total)
