"""Call-length speech for the load generator, and every message of a call encoded before the run.

Each simulated caller is one RAVDESS actor (``../shared/data/ravdess``, read in place and never
copied into the repository): that actor's clips in a call-specific random order, each through the
telephone channel (8 kHz mu-law, exactly as :func:`painline.replay.load_call_audio` prepares any
file), separated by pauses longer than the VAD's 400 ms hangover so the server's segmenter cuts real
utterances, repeated until the call is long enough. Calls cycle through the actors, so neighbouring
calls are different voices.

The JSON of every message is built here, before the clock starts, with the same
:class:`painline.replay.StreamMessages` the replay tool uses: during the run, sending a frame is a
single socket write and the generator's own cost stays out of the measurement.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from painline.replay import CHUNK_MS, StreamMessages, chunks, load_call_audio, new_sid

REPO = Path(__file__).resolve().parents[2]
MULAW_SILENCE = b"\xff"
PAUSE_S = (0.7, 1.6)  # between clips: longer than the VAD hangover (0.4 s), like turn-taking pauses
CLIPS_PER_ACTOR = 16


def data_dir() -> Path:
    """``PAINLINE_DATA_DIR`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("PAINLINE_DATA_DIR")
    return Path(env).expanduser().resolve() if env else (REPO / ".." / "shared" / "data").resolve()


def ravdess_dir() -> Path:
    return data_dir() / "ravdess"


def corpus_available() -> bool:
    return (ravdess_dir() / "manifest.csv").is_file()


NORMAL_LABELS = ("neutral", "calm")
DISTRESS_LABELS = ("angry", "fearful")  # strong intensity: the voices the model should flag


@lru_cache(maxsize=2)
def actor_clips(distress: bool = False) -> dict[str, list[Path]]:
    """Each actor's normal-voice (or distressed, strong-intensity) clip paths, manifest order, capped."""
    root = ravdess_dir()
    labels = DISTRESS_LABELS if distress else NORMAL_LABELS
    out: dict[str, list[Path]] = {}
    with (root / "manifest.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] not in labels or (distress and row.get("intensity") != "strong"):
                continue
            paths = out.setdefault(row["speaker_id"], [])
            if len(paths) < CLIPS_PER_ACTOR:
                paths.append(root / row["path"])
    if not out:
        raise FileNotFoundError(f"no clips in {root / 'manifest.csv'}")
    return dict(sorted(out.items()))


@cache
def _clip_mulaw(path: Path) -> bytes:
    return load_call_audio(path)


def call_audio(index: int, duration_s: float) -> tuple[str, bytes]:
    """``(actor, mulaw)``: ``duration_s`` of one actor's speech and pauses for call number ``index``.

    Even calls are an actor's neutral and calm voice, odd calls the same actor angry or fearful at
    strong intensity, so about half the calls raise a flag and flag latency has a sample to measure.
    """
    actors = actor_clips(distress=index % 2 == 1)
    names = list(actors)
    actor = names[(index // 2) % len(names)]
    rng = random.Random(index)
    target = int(duration_s * 8000)
    out = bytearray(MULAW_SILENCE * int(rng.uniform(*PAUSE_S) * 8000))
    while len(out) < target:
        clips = list(actors[actor])
        rng.shuffle(clips)
        for path in clips:
            out += _clip_mulaw(path)
            out += MULAW_SILENCE * int(rng.uniform(*PAUSE_S) * 8000)
            if len(out) >= target:
                break
    return actor, bytes(out[:target])


@dataclass
class EncodedCall:
    """One call's identity and its stream messages, already JSON text (see the module docstring)."""

    index: int
    actor: str
    account_sid: str
    call_sid: str
    stream_sid: str
    connected: str
    media: list[str]
    stop: str
    audio_s: float

    def start(self, parameters: dict[str, str]) -> str:
        """``start`` (sequence number 1) with the TwiML's parameters, known only once the call is up."""
        builder = StreamMessages(account_sid=self.account_sid, call_sid=self.call_sid, stream_sid=self.stream_sid)
        return json.dumps(builder.start(parameters))


def encode_call(index: int, duration_s: float) -> EncodedCall:
    """Audio for call ``index`` and its messages, numbered as the replay tool numbers them.

    ``start`` carries the stream token from the TwiML, so it is built at call time; here its
    sequence number is taken (1) so media continue from 2 and ``stop`` follows the last of them.
    """
    actor, mulaw = call_audio(index, duration_s)
    account_sid, call_sid = new_sid("AC"), new_sid("CA")
    builder = StreamMessages(account_sid=account_sid, call_sid=call_sid)
    builder.start({})  # placeholder: only its sequence number is used
    media = [json.dumps(builder.media(p, i * CHUNK_MS)) for i, p in enumerate(chunks(mulaw))]
    return EncodedCall(
        index=index,
        actor=actor,
        account_sid=account_sid,
        call_sid=call_sid,
        stream_sid=builder.stream_sid,
        connected=json.dumps(builder.connected()),
        media=media,
        stop=json.dumps(builder.stop()),
        audio_s=len(mulaw) / 8000,
    )
