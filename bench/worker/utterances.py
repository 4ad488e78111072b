"""Real utterances for the worker bench, persisted as the telephony side persists them.

Utterances are RAVDESS speech cut by the live VAD, so their lengths are what a worker really gets.
The services they are scored on are :class:`bench.soak.services.ScratchServices`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, as Twilio sends it


def speech_utterances(ravdess_dir: Path, n: int) -> list[tuple[np.ndarray, bytes]]:
    """``n`` utterances (decoded float32, mu-law bytes) cut by the live VAD from RAVDESS clips.

    Clips are taken round-robin over actors so no one voice dominates.
    """
    from analysis.channel import mulaw_decode
    from analysis.segmentation import UtteranceSegmenter
    from painline.replay import load_call_audio

    actors = sorted(p for p in (ravdess_dir / "audio").iterdir() if p.is_dir())
    if not actors:
        raise FileNotFoundError(f"no RAVDESS audio under {ravdess_dir}")
    per_actor = [sorted(a.glob("*.flac")) for a in actors]
    out: list[tuple[np.ndarray, bytes]] = []
    k = 0
    while len(out) < n:
        files = per_actor[k % len(per_actor)]
        path = files[(k // len(per_actor)) % len(files)]
        k += 1
        mulaw = load_call_audio(path) + b"\xff" * FRAME_BYTES * 50  # a second of silence closes it
        segmenter = UtteranceSegmenter()
        pieces = []
        for i in range(0, len(mulaw) - FRAME_BYTES + 1, FRAME_BYTES):
            pieces += segmenter.push(i // 8, mulaw[i : i + FRAME_BYTES])
        pieces += segmenter.flush()
        out += [(mulaw_decode(p.mulaw), p.mulaw) for p in pieces]
    return out[:n]


def persist_utterances(sessions: Callable[[], Session], clips: list[bytes], per_call: int = 12) -> list[int]:
    """``clips`` as pending utterances, ``per_call`` to a call of one patient, as telephony writes them."""
    ids: list[int] = []
    for i in range(0, len(clips), per_call):
        ids += _persist_call(sessions, clips[i : i + per_call])
    return ids


def _persist_call(sessions: Callable[[], Session], clips: list[bytes]) -> list[int]:
    from schema.models import Call, CallStatus, Patient, Utterance, UtteranceAudio, UtteranceStatus, utcnow

    with sessions() as session, session.begin():
        patient = Patient(key=f"ref:bench-{secrets.token_hex(4)}", created_at=utcnow())
        session.add(patient)
        session.flush()
        call = Call(
            call_sid="CA" + secrets.token_hex(16),
            patient_id=patient.id,
            started_at=utcnow(),
            status=CallStatus.STREAMING.value,
            consent=True,
        )
        session.add(call)
        session.flush()
        ids = []
        start = 0
        for seq, mulaw in enumerate(clips):
            length_ms = len(mulaw) // 8
            row = Utterance(
                call_id=call.id,
                seq=seq,
                start_ms=start,
                end_ms=start + length_ms,
                speech_s=length_ms / 1000.0,
                status=UtteranceStatus.PENDING.value,
                created_at=utcnow(),
            )
            start += length_ms + 1000
            session.add(row)
            session.flush()
            session.add(UtteranceAudio(utterance_id=row.id, mulaw=mulaw))
            ids.append(row.id)
    return ids
