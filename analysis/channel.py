"""The telephone channel: 8 kHz G.711 mu-law, exactly what a Twilio Media Stream delivers.

Training and evaluation pass every clip through :func:`telephone` so the model never sees
bandwidth or quantisation the live product cannot hear. The live decoder uses the same
:func:`mulaw_decode`, so both sides share one codec.
"""

from __future__ import annotations

import sys
import warnings
from typing import Protocol

import numpy as np

from analysis.audio import resample


class _AudioOp(Protocol):
    """The two functions of ``audioop`` this module uses."""

    def ulaw2lin(self, fragment: bytes, width: int, /) -> bytes: ...

    def byteswap(self, fragment: bytes, width: int, /) -> bytes: ...


_audioop: _AudioOp | None
with warnings.catch_warnings():
    # the stdlib module is deprecated in 3.11-3.12 and provided by audioop-lts from 3.13 on
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop as _audioop_module
    except ImportError:  # pragma: no cover - a Python without either
        _audioop = None
    else:
        _audioop = _audioop_module

TELEPHONE_RATE = 8000
_BIAS = 0x84
_CLIP = 32635


def _build_decode_table() -> np.ndarray:
    table = np.empty(256, dtype=np.int16)
    for byte in range(256):
        u = ~byte & 0xFF
        sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
        magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
        table[byte] = -magnitude if sign else magnitude
    return table


_DECODE = _build_decode_table()
_DECODE_F32 = (_DECODE.astype(np.float32) / 32768.0).astype(np.float32)


def _build_encode_table() -> np.ndarray:
    """Encoder as a lookup over all 16-bit magnitudes: vectorised and exact to G.711."""
    mag = np.arange(_CLIP + 1, dtype=np.int32) + _BIAS
    exponent = np.clip(np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return ((exponent << 4) | mantissa).astype(np.uint8)


_ENCODE_MAG = _build_encode_table()


def mulaw_decode(payload: bytes) -> np.ndarray:
    """G.711 mu-law bytes to float32 samples in [-1, 1]."""
    return _DECODE_F32[np.frombuffer(payload, dtype=np.uint8)]


def mulaw_decode_pcm16(payload: bytes) -> np.ndarray:
    """G.711 mu-law bytes to int16 PCM, the form webrtcvad wants."""
    return _DECODE[np.frombuffer(payload, dtype=np.uint8)]


def mulaw_to_pcm16_bytes(payload: bytes) -> bytes:
    """G.711 mu-law bytes to little-endian 16-bit PCM bytes, for webrtcvad, once per 20 ms frame.

    This runs for every frame of every live call, so it uses the C decoder of ``audioop`` (much
    faster than the table lookup through numpy: ``docs/scaling.md``, Profiling); a test checks it
    gives the reference table's value for all 256 codes.
    """
    if _audioop is not None:
        pcm = _audioop.ulaw2lin(payload, 2)
        return pcm if sys.byteorder == "little" else _audioop.byteswap(pcm, 2)
    return mulaw_decode_pcm16(payload).astype("<i2").tobytes()


def mulaw_encode(x: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to G.711 mu-law bytes."""
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    # G.711 (ITU-T G.191 reference) works on 14-bit magnitudes; negative samples take the one's
    # complement first, so the code is symmetric about zero
    mag = np.minimum(np.where(pcm < 0, (~pcm) >> 2, pcm >> 2) << 2, _CLIP)
    encoded: np.ndarray = (~(sign | _ENCODE_MAG[mag]) & 0xFF).astype(np.uint8)
    return encoded.tobytes()


def telephone(x: np.ndarray, sr: int) -> np.ndarray:
    """Downsample to 8 kHz and round-trip through mu-law: the audio a Twilio stream carries."""
    narrow = resample(np.asarray(x, dtype=np.float32), sr, TELEPHONE_RATE)
    return mulaw_decode(mulaw_encode(narrow))
