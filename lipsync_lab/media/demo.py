"""The embedded demo: a real photograph with natural head motion, and speech-like audio made on the fly.

Nothing is read from outside the installed packages: the face is scikit-image's astronaut photograph (Eileen
Collins, public domain, shipped inside the wheel), animated by a smooth similarity transform (nods, turns, small
zooms); the audio is a source-filter vowel synthesiser (glottal pulse train with jittered pitch through formant
resonators, syllable envelopes, consonant noise bursts, pauses between phrases), so a whisper front end sees
harmonic, speech-shaped spectra rather than tones.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import signal

from lipsync_lab.media.source import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

# (F1, F2, F3) in Hz of a few vowels, average adult values
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
           (660, 1720, 2410), (440, 1020, 2240)]


def speech_like_audio(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    # intonation: slow declination + phrase-level wobble + jitter
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.35 * t) - 10 * (t % 2.5) / 2.5
    f0 *= 1 + 0.01 * signal.lfilter([1], [1, -0.995], rng.standard_normal(n)) / 10
    phase = np.cumsum(f0 / sample_rate)
    glottal = signal.sawtooth(2 * np.pi * phase, width=0.85) - 0.3 * signal.sawtooth(4 * np.pi * phase)
    out = np.zeros(n)
    pos = int(0.15 * sample_rate)
    while pos < n:
        if rng.random() < 0.12:  # a pause between phrases
            pos += int(rng.uniform(0.15, 0.35) * sample_rate)
            continue
        length = int(rng.uniform(0.12, 0.28) * sample_rate)
        seg = slice(pos, min(n, pos + length))
        m = seg.stop - seg.start
        voiced = glottal[seg].copy()
        for f, bw in zip(_VOWELS[rng.integers(len(_VOWELS))], (90, 110, 170)):
            r = np.exp(-np.pi * bw / sample_rate)
            a = [1, -2 * r * np.cos(2 * np.pi * f / sample_rate), r * r]
            voiced = voiced + 0.6 * signal.lfilter([1 - r], a, glottal[seg])
        env = np.sin(np.linspace(0, np.pi, m)) ** 0.6
        out[seg] += voiced * env
        if rng.random() < 0.6:  # a fricative or plosive onset
            burst = min(m, int(0.04 * sample_rate))
            noise = signal.lfilter(*signal.butter(2, 3000 / (sample_rate / 2), "high"), rng.standard_normal(burst))
            out[pos:pos + burst] += 0.3 * noise * np.hanning(burst)
        pos += length + int(rng.uniform(0.0, 0.06) * sample_rate)
    out /= np.abs(out).max() + 1e-9
    return (0.5 * out).astype(np.float32)


class DemoSource:
    """Astronaut photograph with head motion + synthetic speech; `seconds` long at 25 fps."""

    def __init__(self, seconds: float = 4.0, size: int = 512, seed: int = 0, max_frames: int | None = None):
        from skimage import data  # the photograph ships inside scikit-image

        self.name = "demo"
        photo = data.astronaut()[:400, 40:400]  # head and shoulders
        self.photo = np.ascontiguousarray(photo)
        self.width = self.height = int(size)
        n = int(round(seconds * FPS))
        self.n_frames = min(n, max_frames) if max_frames else n
        self.audio = speech_like_audio(self.n_frames / FPS, seed)[: self.n_frames * SAMPLES_PER_FRAME]
        self.seed = seed

    def _motion(self, k: int) -> np.ndarray:
        """Smooth pseudo-random head motion: sums of incommensurate slow sinusoids (about 0.2–0.7 Hz)."""
        t = k / FPS
        rng = np.random.default_rng(self.seed + 1)
        ph = rng.uniform(0, 2 * np.pi, 4)
        angle = 4.0 * np.sin(2 * np.pi * 0.31 * t + ph[0]) + 1.5 * np.sin(2 * np.pi * 0.73 * t + ph[1])
        scale = 1.45 * (1 + 0.04 * np.sin(2 * np.pi * 0.23 * t + ph[2]))
        dx = 14 * np.sin(2 * np.pi * 0.19 * t + ph[3])
        dy = 8 * np.sin(2 * np.pi * 0.41 * t + ph[0] + 1)
        face_centre = (182.0, 130.0)  # in the cropped photo
        m = cv2.getRotationMatrix2D(face_centre, angle, scale)
        # keep the top of the photo near the top of the frame: little lies above the head to reflect into view
        m[:, 2] += np.array([self.width / 2 + dx, face_centre[1] * scale + 14 + dy]) - np.array(face_centre)
        return m

    def content_key(self) -> str:
        """The frames depend on the frame size and the motion seed only (the length just cuts them)."""
        return f"demo-v1-size{self.width}-seed{self.seed}"

    def frames(self):
        for k in range(self.n_frames):
            yield cv2.warpAffine(self.photo, self._motion(k), (self.width, self.height),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


# ---------------------------------------------------------------------------------------------------------------
# The demo as files: what stands in for LatentSync's demo clip where the data folder (lipsync_lab.paths.DATA_DIR)
# lacks it, and what the tests use to exercise the file source without it.


def _cached(stem: str, suffix: str):
    from lipsync_lab.paths import CACHE_DIR

    return CACHE_DIR / "demo" / f"{stem}{suffix}"


def _replace_into(path, write) -> None:
    """Call write(tmp) on a temporary name beside `path`, then move it into place: a reader (another notebook, a
    second test process) never sees a half-written file, and an interrupted write leaves no cache behind."""
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def demo_clip(path=None, seconds: float = 4.0, size: int = 512, seed: int = 0, rate: int = 44100,
              channels: int = 2):
    """The embedded demo written as an mp4: H.264 frames (`size`² at 25 fps) and its speech as an AAC track at
    `rate` Hz with `channels` channels — a camera's 44.1 kHz stereo by default, so whoever reads it resamples and
    down-mixes as with a real clip. Returns the path: `path`, or (None) a file under the project's .cache/demo/ named
    by the parameters, written once and reused."""
    from fractions import Fraction

    import av

    source = DemoSource(seconds=seconds, size=size, seed=seed)
    if path is None:
        path = _cached(f"{source.content_key()}-{seconds:g}s-{rate}hz{channels}ch", ".mp4")
        if path.is_file():
            return path

    def write(tmp):
        with av.open(str(tmp), "w", format="mp4") as c:
            v = c.add_stream("libx264", rate=FPS, options={"crf": "18"})  # near-lossless: dlib sees the photo's face
            v.width, v.height, v.pix_fmt = source.width, source.height, "yuv420p"
            a = c.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")
            for i, frame in enumerate(source.frames()):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, FPS)
                c.mux(v.encode(vf))
            c.mux(v.encode(None))
            speech = signal.resample_poly(source.audio, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else source.audio
            planes = np.ascontiguousarray(np.repeat(speech[None].astype(np.float32), channels, axis=0))
            af = av.AudioFrame.from_ndarray(planes, format="fltp", layout=a.layout.name)
            af.sample_rate, af.pts, af.time_base = rate, 0, Fraction(1, rate)
            c.mux(a.encode(af))
            c.mux(a.encode(None))

    _replace_into(path, write)
    return path


def demo_speech(path=None, seconds: float = 10.0, seed: int = 0):
    """The embedded demo's speech written as a 16 kHz mono 16-bit wav. Returns the path: `path`, or (None) a file
    under the project's .cache/demo/ named by the parameters, written once and reused."""
    from scipy.io import wavfile

    if path is None:
        path = _cached(f"speech-v1-seed{seed}-{seconds:g}s", ".wav")
        if path.is_file():
            return path
    pcm = np.round(speech_like_audio(seconds, seed) * 32767).astype(np.int16)
    _replace_into(path, lambda tmp: wavfile.write(tmp, SAMPLE_RATE, pcm))
    return path
