"""The one definition of the media constants: the model's timeline and the file types the tools read and write."""

SAMPLE_RATE = 16000
"""Audio sample rate (Hz) of every audio path: Whisper features, the Wav2Lip mel, written clips."""

VIDEO_FPS = 25
"""Frame rate of the model's timeline: inputs are resampled to it, outputs are written at it."""

SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS
"""Audio samples per video frame (640)."""

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".mts",
                    ".m2ts", ".3gp", ".3g2", ".wmv", ".ogv", ".vob", ".mxf")
"""File endings recognised as videos when a folder is searched (data preparation, evaluation, training clips, batch
runs): each is read by the bundled ffmpeg (tests/test_media.py writes and reads one of each). ``.mts`` / ``.m2ts``:
AVCHD camcorders; ``.3gp`` / ``.3g2``: phones; ``.wmv``: Windows; ``.vob``: DVDs; ``.mxf``: professional cameras."""

SILENT_VIDEO_EXTENSIONS = (".gif",)
"""Endings of moving pictures without sound that a run takes as its face video (an animated GIF, read by ffmpeg as a
video): searched for only where the speech comes from another file (a batch's folder of pairs). Not among
[`VIDEO_EXTENSIONS`], whose files carry their own sound (data preparation, evaluation, training clips need it)."""

OUTPUT_FORMATS = (".mp4", ".mov", ".mkv")
"""Containers the video writer produces (H.264 + AAC)."""

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".aif", ".aiff", ".caf",
                    ".wma", ".amr")
"""File endings recognised as speech tracks when a folder of video/audio pairs is searched (batch runs); each is
read by the bundled ffmpeg. ``.aif`` / ``.aiff`` / ``.caf``: Apple's recorders and editors; ``.wma``: Windows;
``.amr``: phones' voice memos."""
