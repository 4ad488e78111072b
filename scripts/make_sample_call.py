#!/usr/bin/env python3
"""Regenerate ``painline/samples/sample_call.flac``, the recording ``painline demo`` replays.

The sample is synthetic speech made by the project itself (no corpus audio, no real person): one
caller whose first half is calm (low, steady pitch, unhurried, quiet) and whose second half sounds
distressed (higher and more variable pitch, faster, louder, a shaky, breathy voice and a groan
between its sentences). Sentences are separated by pauses long enough for the voice activity
detector to cut them into separate utterances, so the demo shows a per-utterance table.

It is a demonstration of the pipeline, not a test of the model: synthetic speech sounds nothing
like a patient in pain, and no claim about accuracy should be drawn from the demo's verdict.

Needs ``espeak-ng`` (``apt-get install espeak-ng``) only to regenerate the file; the committed file
is what the demo uses. Output: mono 8 kHz FLAC, a background of faint line noise, about 20 s.

    python3 scripts/make_sample_call.py [--out painline/samples/sample_call.flac]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, resample_poly

RATE = 8000
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "painline" / "samples" / "sample_call.flac"


@dataclass(frozen=True)
class Line:
    text: str
    pitch: int  # espeak-ng -p, 0-99
    speed: int  # words per minute
    gain: float  # linear gain applied after synthesis
    tremolo_hz: float = 0.0
    tremolo_depth: float = 0.0
    pause_s: float = 1.0  # silence after the line


CALM = [
    Line("Hello, this is Sam, calling back about my appointment.", 38, 140, 0.35),
    Line("I am doing all right today, and I slept quite well.", 36, 135, 0.33),
]
DISTRESSED = [
    Line("But now it really hurts, right down my leg.", 74, 180, 0.85, 7.0, 0.35),
    Line("Please, I can't move it. Can someone help me?", 80, 190, 0.95, 8.0, 0.45),
]


def espeak(line: Line, voice: str) -> np.ndarray:
    """Synthesise one line with espeak-ng and return it at 8 kHz, float32 in [-1, 1]."""
    cmd = ["espeak-ng", "-v", voice, "-p", str(line.pitch), "-s", str(line.speed), "-a", "150", "--stdout", line.text]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    data = data if data.ndim == 1 else data.mean(axis=1)
    g = np.gcd(int(rate), RATE)
    return resample_poly(data, RATE // g, int(rate) // g).astype(np.float32)


def shape(x: np.ndarray, line: Line, rng: np.random.Generator) -> np.ndarray:
    """Level, tremolo (a shaky voice) and a little pitch-synchronous roughness for distress."""
    y = x / (np.max(np.abs(x)) + 1e-9)
    if line.tremolo_hz:
        t = np.arange(len(y)) / RATE
        wobble = 1.0 + line.tremolo_depth * np.sin(2 * np.pi * line.tremolo_hz * t + rng.uniform(0, 6.28))
        y = y * wobble
        # breathiness: band-limited noise riding on the voice's own envelope
        envelope = np.abs(lfilter(*butter(2, 30 / (RATE / 2)), np.abs(y)))
        breath = lfilter(*butter(4, [400 / (RATE / 2), 3000 / (RATE / 2)], btype="band"), rng.normal(0, 1, len(y)))
        y = y + 0.25 * envelope * breath / (np.std(breath) + 1e-9)
    y = y / (np.max(np.abs(y)) + 1e-9)
    return (line.gain * y).astype(np.float32)


def groan(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A low voiced moan: a glottal-like pulse train with a falling pitch through two formants."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 180 - 60 * t / seconds + 6 * np.sin(2 * np.pi * 5 * t)
    phase = np.cumsum(f0) / RATE
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    source = lfilter([1.0], [1.0, -0.97], pulses)  # spectral tilt of a glottal source
    voiced = np.zeros(n)
    for formant, bandwidth in ((600, 90), (1000, 120)):
        r = np.exp(-np.pi * bandwidth / RATE)
        theta = 2 * np.pi * formant / RATE
        voiced += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
    envelope = np.sin(np.pi * t / seconds) ** 0.7
    y = voiced * envelope + 0.02 * rng.normal(0, 1, n) * envelope
    return (0.6 * y / (np.max(np.abs(y)) + 1e-9)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def build(voice: str = "en-us+m3", seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [silence(0.6)]
    for line in CALM:
        parts += [shape(espeak(line, voice), line, rng), silence(line.pause_s)]
    parts.append(silence(0.4))
    for i, line in enumerate(DISTRESSED):
        parts += [shape(espeak(line, voice), line, rng), silence(0.7)]
        if i < len(DISTRESSED) - 1:
            parts += [groan(1.1, rng), silence(line.pause_s)]
    parts.append(silence(0.8))
    y = np.concatenate(parts)
    # a real line is never digitally silent: faint hiss, and the telephone band (300-3400 Hz)
    y = y + rng.normal(0, 0.0015, len(y)).astype(np.float32)
    b, a = butter(4, [300 / (RATE / 2), 3400 / (RATE / 2)], btype="band")
    y = lfilter(b, a, y)
    return np.clip(0.9 * y / np.max(np.abs(y)), -1, 1).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--voice", default="en-us+m3", help="espeak-ng voice (default: en-us+m3)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install espeak-ng", file=sys.stderr)
        return 2
    y = build(args.voice)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.out), y, RATE, format="FLAC", subtype="PCM_16")
    print(f"wrote {args.out} ({len(y) / RATE:.1f} s, {args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
