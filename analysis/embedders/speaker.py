"""Speaker d-vectors from resemblyzer's ``VoiceEncoder``: who is talking, not how they feel.

Painline compares a caller with their own baseline, so it needs to know that a call really is the
same person as the enrolled baseline. resemblyzer's GE2E LSTM encoder is small, runs offline on CPU
and ships its weights inside the pip package, which makes it usable on a hotline's own machines.

Silence trimming is deliberately left out: resemblyzer's ``preprocess_wav`` runs webrtcvad and drops
"silent" stretches, which can leave nothing of a 0.5 s or very quiet clip and then crash the encoder.
Calls reach the embedder already segmented by the telephony VAD, so only the level is normalised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from analysis.embedders.base import Embedder, EmbedderUnavailable

SPEAKER_RATE = 16000
# resemblyzer's own target level: quiet telephone audio is raised to it, loud audio left alone
_TARGET_DBFS = -30.0
_SILENT_RMS = 1e-5


def pooled_similarity(vectors: Sequence[np.ndarray], reference: np.ndarray) -> float:
    """Similarity of a stretch of speech, given as several utterances' embeddings, to ``reference``.

    Each embedding is normalised before they are averaged, so every utterance counts the same and
    the pooled vector is resemblyzer's way of embedding a longer recording. Deciding on the call's
    speech so far, rather than on each utterance alone, keeps a caller's baseline on when one
    utterance (shouted, crying) moves away from their enrolled voice.
    """
    units = []
    for vector in vectors:
        v = np.asarray(vector, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(v))
        if norm > 0:
            units.append(v / norm)
    if not units:
        return 0.0
    return cosine_similarity(np.mean(units, axis=0), reference)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two embeddings; 0.0 when either is all zeros.

    Used to verify that a caller's voice matches their enrolled baseline. Inputs need not be
    normalised, so stored vectors from any embedder can be compared.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"cannot compare embeddings of shapes {x.shape} and {y.shape}")
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))


def _raise_level(wav: np.ndarray) -> np.ndarray:
    """Raise quiet clips to -30 dBFS (never lower loud ones), as resemblyzer was trained on.

    Written here rather than calling resemblyzer's ``normalize_volume`` because that one takes
    ``log10(0)`` on digital silence, which a muted phone line does produce.
    """
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms < _SILENT_RMS:
        return wav
    gain = 10.0 ** (_TARGET_DBFS / 20.0) / rms
    return (wav * gain).astype(np.float32) if gain > 1.0 else wav


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, then restore the process setting."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SpeakerEmbedder(Embedder):
    """256-d, L2-normalised d-vector per clip (resemblyzer ``VoiceEncoder.embed_utterance``).

    ``torch_threads`` (default 1) caps torch's intra-op threads while embedding: one clip is only
    a handful of 1.6 s partials through a small LSTM, so extra threads mostly wait on each other
    (measured slower, not faster: ``docs/scaling.md``, Profiling). ``None`` leaves torch alone.
    """

    name = "speaker"
    sample_rate = SPEAKER_RATE

    def __init__(self, torch_threads: int | None = 1) -> None:
        if torch_threads is not None and torch_threads < 1:
            raise ValueError("torch_threads must be at least 1 (or None)")
        self.torch_threads = torch_threads
        self._encoder: Any = None

    def _load(self) -> Any:
        """Build the encoder once per instance; importing torch is what makes this slow."""
        if self._encoder is None:
            try:
                from resemblyzer import VoiceEncoder
            except ImportError as exc:
                raise EmbedderUnavailable(
                    "the 'speaker' embedder needs resemblyzer and torch: "
                    "pip install 'painline[speaker]' and resemblyzer (--no-deps)"
                ) from exc
            try:
                self._encoder = VoiceEncoder(device="cpu", verbose=False)
            except Exception as exc:  # resemblyzer raises a bare Exception when pretrained.pt is missing
                raise EmbedderUnavailable(f"resemblyzer could not load its voice encoder weights: {exc}") from exc
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self._load().linear.out_features)

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        encoder = self._load()
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        for i, clip in enumerate(clips):
            wav = _raise_level(np.asarray(clip, dtype=np.float32))
            with _torch_threads(self.torch_threads):
                raw = encoder.embed_utterance(wav)
            vec = np.nan_to_num(np.asarray(raw, dtype=np.float64))
            norm = float(np.linalg.norm(vec))
            # resemblyzer already normalises, but a clip where every unit is ReLU'd to zero gives
            # 0/0; such a clip carries no identity, so it stays the zero vector instead of NaN
            if norm > 0.0:
                out[i] = (vec / norm).astype(np.float32)
        return out


class SpeakerSpreadEmbedder(SpeakerEmbedder):
    """512-d: the mean and the spread of resemblyzer's partial d-vectors over a clip.

    ``embed_utterance`` averages 1.6 s partial embeddings into one identity vector; how much those
    partials move within an utterance (a voice breaking, a cry rising) is thrown away by the average
    and is what this keeps beside it. A clip shorter than one partial has no spread (zeros).
    """

    name = "speaker-spread"

    @property
    def dim(self) -> int:
        return 2 * super().dim

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        encoder = self._load()
        half = self.dim // 2
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        for i, clip in enumerate(clips):
            wav = _raise_level(np.asarray(clip, dtype=np.float32))
            with _torch_threads(self.torch_threads):
                _, partials, _ = encoder.embed_utterance(wav, return_partials=True)
            parts = np.nan_to_num(np.atleast_2d(np.asarray(partials, dtype=np.float64)))
            out[i, :half] = parts.mean(axis=0)
            out[i, half:] = parts.std(axis=0)
        return out
