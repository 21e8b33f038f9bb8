"""Regenerate the bundled sample inputs of the notebooks and the app's examples (``python examples/make_examples.py``).

Every picture comes from a photograph that may be redistributed, shipped with scikit-image:

- ``skimage.data.astronaut``: NASA's portrait of astronaut Eileen Collins, public domain.
- ``skimage.data.camera``: "camera" by Lav Varshney, CC0.

The pictures are animated with a slow zoom and sway so the face tracker has real motion to follow; the speech is
synthesised with espeak-ng (its output is not copyrighted material of the program's authors). Files:

- ``face.mp4`` + ``speech.wav``: the astronaut (3 s), an English sentence.
- ``camera.mp4`` + ``camera_speech.wav``: the photographer (3.4 s), another voice.
- ``two_faces.mp4`` + ``two_faces_speech.wav``: both side by side (2.8 s): face 0 left, face 1 right.
- ``portrait.png`` + ``portrait_speech.wav``: a still photo of the astronaut, to make a talking video from.

Needs ``pip install scikit-image`` and the ``espeak-ng`` program (Debian package espeak-ng). Existing files are kept
unless ``--force`` is given (espeak-ng releases differ slightly, so regenerating changes the bytes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Callable

import cv2
import imageio_ffmpeg
import numpy as np
import PIL.Image
from skimage import data

HERE = os.path.dirname(os.path.abspath(__file__))
FPS = 25
TEXTS = {
    "speech.wav": ("Hello! This is a short sample sentence for lip sync.", "en"),
    "camera_speech.wav": ("Good morning. Every picture tells a story.", "en-us+f3"),
    "two_faces_speech.wav": ("Which of us is talking? You choose.", "en+m3"),
    "portrait_speech.wav": ("A photo can talk too.", "en-gb+f2"),
}


def _camera() -> np.ndarray:
    gray = data.camera()
    return np.ascontiguousarray(np.stack([gray] * 3, axis=-1))


def _swaying(image: np.ndarray, centre: tuple[float, float], size: int, zoom: float, seconds: float,
             phase: float = 0.0) -> Callable[[int], np.ndarray]:
    """Frame ``i`` of a ``size`` x ``size`` view of ``image`` centred on ``centre``, zoomed by ``zoom``, with a slow
    breathing zoom and a sway of a few degrees."""
    cx, cy = centre

    def frame(i: int) -> np.ndarray:
        t = i / FPS
        scale = zoom * (1.0 + 0.03 * np.sin(2 * np.pi * t / seconds + phase))
        angle = 2.0 * np.sin(2 * np.pi * t / 1.5 + phase)
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[:, 2] += (size / 2 - cx, size / 2 - cy)
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    return frame


def _write_video(path: str, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=FPS, codec="libx264", quality=None,
                                         output_params=["-crf", "23", "-pix_fmt", "yuv420p"], macro_block_size=1,
                                         ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def make_face(path: str) -> None:
    seconds = 3.0
    view = _swaying(data.astronaut(), (225.0, 150.0), 384, 1.0, seconds)
    _write_video(path, [view(i) for i in range(int(FPS * seconds))])


def make_camera(path: str) -> None:
    seconds = 3.4
    view = _swaying(_camera(), (238.0, 175.0), 320, 1.8, seconds)
    _write_video(path, [view(i) for i in range(int(FPS * seconds))])


def make_two_faces(path: str) -> None:
    seconds = 2.8
    left = _swaying(data.astronaut(), (225.0, 130.0), 256, 1.2, seconds)
    right = _swaying(_camera(), (238.0, 170.0), 256, 1.8, seconds, phase=1.3)
    _write_video(path, [np.concatenate([left(i), right(i)], axis=1) for i in range(int(FPS * seconds))])


def make_portrait(path: str) -> None:
    PIL.Image.fromarray(data.astronaut()[20:404, 33:417]).save(path)


def make_speech(path: str, text: str, voice: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", raw, "-ac", "1", "-ar", "16000",
                        path], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="regenerate files that exist")
    args = parser.parse_args()
    makers = {"face.mp4": make_face, "camera.mp4": make_camera, "two_faces.mp4": make_two_faces,
              "portrait.png": make_portrait}
    makers.update({name: (lambda p, t=text, v=voice: make_speech(p, t, v)) for name, (text, voice) in TEXTS.items()})
    for name, make in makers.items():
        path = os.path.join(HERE, name)
        if args.force or not os.path.exists(path):
            make(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
