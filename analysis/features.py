"""Clip features through the telephone channel, cut as a call cuts, cached on disk.

A model is trained and judged on what the worker will be given: not a corpus clip but the
utterance(s) the call's VAD cuts from it, each level-normalised on its own after decoding. With
``ChannelConfig.segment`` (the default for training and the bench) a clip is framed by a call's
pause, cut by :func:`analysis.segmentation.cut_clip` and embedded utterance by utterance; scoring the
whole file instead moves features such as the loudness percentiles far enough that a baseline
enrolled one way does not describe calls measured the other way.

Extraction dominates every experiment, so each clip's vector is cached under a key made of the
clip (path, size, modification time), the embedder (its description) and the channel settings.
Changing any of them misses the cache; nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from analysis.audio import load_audio, resample, rms_normalise
from analysis.channel import TELEPHONE_RATE, telephone
from analysis.dataset import Clip
from analysis.embedders.base import Embedder
from analysis.embedders.fusion import ConcatEmbedder
from analysis.perturb import Noise, babble, clip_rng, drop_frames, mix_at_snr, white
from analysis.segmentation import cut_clip


@dataclass(frozen=True)
class ChannelConfig:
    """How a corpus clip is turned into what the live product hears."""

    telephone: bool = True
    rms_normalise: bool = False
    gain_db: float = 0.0  # test-time gain, for the gain-invariance check
    segment: bool = False  # cut into the utterances a call's VAD would cut, as the worker scores them
    # test-time damage for the robustness rows (analysis.perturb): noise at snr_db, lost 20 ms frames
    noise: Noise = Noise.NONE
    snr_db: float = 0.0
    frame_loss: float = 0.0

    def key(self) -> str:
        # the damage fields enter the key only when set, so undamaged features keep their cached keys
        d = {k: v for k, v in asdict(self).items() if k not in _DAMAGE or v != _DAMAGE[k]}
        return json.dumps(d, sort_keys=True)

    @property
    def damaged(self) -> bool:
        return any(getattr(self, k) != v for k, v in _DAMAGE.items())

    def card(self) -> dict[str, bool]:
        """What a model card records of the channel it was trained on (test-time gain is not part of it)."""
        return {"telephone": self.telephone, "rms_normalise": self.rms_normalise, "segment": self.segment}


_DAMAGE = {"noise": Noise.NONE, "snr_db": 0.0, "frame_loss": 0.0}


def prepare(path: Path, channel: ChannelConfig, babble_sources: Sequence[Path] = ()) -> np.ndarray:
    """Load one clip and pass it through the channel: 8 kHz mu-law float32.

    The order mirrors a real call: the caller's level (gain, clipped as a phone would) and the
    room's noise go in before the codec, lost packets after it; level normalisation is what
    painline itself does after decoding. ``babble_sources``: other speakers' clips, for babble noise.
    """
    x, sr = load_audio(path)
    if channel.gain_db:
        x = np.clip(x * 10 ** (channel.gain_db / 20), -1.0, 1.0)
    if channel.noise is not Noise.NONE:
        x, sr = resample(x, sr, TELEPHONE_RATE), TELEPHONE_RATE  # noise is measured in the phone's band
        if channel.noise is Noise.BABBLE:
            noise = babble([load_audio(p, TELEPHONE_RATE)[0] for p in babble_sources], x.size)
        else:
            noise = white(x.size, clip_rng(path.name, "white"))
        x = mix_at_snr(x, noise, channel.snr_db)
    x = telephone(x, sr) if channel.telephone else resample(x, sr, TELEPHONE_RATE)
    if channel.frame_loss:
        x = drop_frames(x, channel.frame_loss, clip_rng(path.name, "frame_loss"))
    return rms_normalise(x) if channel.rms_normalise else x


def prepare_utterances(path: Path, channel: ChannelConfig, babble_sources: Sequence[Path] = ()) -> list[np.ndarray]:
    """The utterances a call would deliver to the worker from this clip, as the worker decodes them.

    Without ``channel.segment`` that is the whole prepared clip. With it, the clip goes through the
    channel without level normalisation, is cut by the call's VAD and padding (:func:`cut_clip`),
    and each utterance is normalised on its own, as ``worker.featurize`` does. An empty list means
    a call would score nothing of this clip.
    """
    if not channel.segment:
        return [prepare(path, channel, babble_sources)]
    pieces = cut_clip(prepare(path, replace(channel, rms_normalise=False), babble_sources))
    return [rms_normalise(u.samples) if channel.rms_normalise else u.samples for u in pieces]


def combine(vectors: Sequence[np.ndarray], durations: Sequence[float], dim: int) -> np.ndarray:
    """One clip's vector from its utterances' vectors: their mean weighted by duration.

    Almost every corpus clip is one utterance, so this is that utterance's vector; a clip the VAD
    split is summarised by the duration-weighted mean (the worker would score its pieces apart), and
    a clip with no utterance gets a row of NaN, which :func:`has_speech` lets callers drop.
    """
    if not vectors:
        return np.full(dim, np.nan, dtype=np.float32)
    w = np.asarray(durations, dtype=np.float64)
    return (np.average(np.vstack(vectors), axis=0, weights=w)).astype(np.float32)


def has_speech(X: np.ndarray) -> np.ndarray:
    """Rows of :func:`extract`'s output that hold a vector (a segmented clip may hold none)."""
    return np.asarray(~np.isnan(X).any(axis=1))


def channel_fingerprint() -> str:
    """A digest of what the channel code does to a fixed test signal.

    Part of every cache key, so a change to the resampler or the codec (not just to the settings)
    misses the cache instead of silently reusing features the current code would not produce.
    """
    t = np.arange(16000, dtype=np.float64) / 16000
    probe = 0.5 * np.sin(2 * np.pi * 220 * t) * np.linspace(0, 1, t.size) + 1e-4 * np.cos(2 * np.pi * 3100 * t)
    out = telephone(probe.astype(np.float32), 16000)
    return hashlib.sha1(np.concatenate([out, rms_normalise(out)]).tobytes()).hexdigest()[:16]


class FeatureCache:
    """A folder of ``.npy`` vectors, one per (clip, embedder, channel, channel code)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.code = channel_fingerprint()

    def _key(self, clip_path: Path, embedder: Embedder, channel: ChannelConfig) -> Path:
        st = clip_path.stat()
        ident = json.dumps(
            [str(clip_path.resolve()), st.st_size, st.st_mtime_ns, embedder.describe(), channel.key(), self.code],
            sort_keys=True,
        )
        digest = hashlib.sha1(ident.encode()).hexdigest()
        return self.root / embedder.name / digest[:2] / f"{digest}.npy"

    def get(self, clip_path: Path, embedder: Embedder, channel: ChannelConfig) -> np.ndarray | None:
        path = self._key(clip_path, embedder, channel)
        return np.load(path) if path.exists() else None

    def put(self, clip_path: Path, embedder: Embedder, channel: ChannelConfig, vec: np.ndarray) -> None:
        path = self._key(clip_path, embedder, channel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vec.astype(np.float32))
        tmp.replace(path)


def extract(
    clips: Sequence[Clip],
    embedder: Embedder,
    channel: ChannelConfig = ChannelConfig(),
    cache: FeatureCache | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Embed every clip (through the channel), reusing cached vectors. Returns ``(n, dim)``.

    A concatenated embedder is extracted part by part, so each part's cache is shared with runs
    that use that part alone. With ``channel.segment`` each clip is embedded as the utterances a
    call would cut from it (:func:`prepare_utterances`, :func:`combine`); rows of clips with no
    utterance are NaN.
    """
    if isinstance(embedder, ConcatEmbedder):
        return np.hstack([extract(clips, p, channel, cache, batch_size, progress) for p in embedder.parts])
    out: list[np.ndarray | None] = [cache.get(c.path, embedder, channel) if cache else None for c in clips]
    todo = [i for i, v in enumerate(out) if v is None]
    bar = tqdm(total=len(todo), desc=f"{embedder.name} features", unit="clip", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        pieces = [prepare_utterances(clips[i].path, channel, _babble_sources(clips, i, channel)) for i in idx]
        flat = [u for p in pieces for u in p]
        embedded = iter(embedder.embed(flat, TELEPHONE_RATE) if flat else [])
        vecs = [combine([next(embedded) for _ in p], [len(u) for u in p], embedder.dim) for p in pieces]
        for i, v in zip(idx, vecs, strict=True):
            out[i] = v
            if cache:
                cache.put(clips[i].path, embedder, channel, v)
        bar.update(len(idx))
    bar.close()
    return np.vstack([v for v in out if v is not None]).astype(np.float32)


BABBLE_VOICES = 4


def _babble_sources(clips: Sequence[Clip], i: int, channel: ChannelConfig) -> list[Path]:
    """For babble noise: clips of other speakers among ``clips``, chosen by the clip's own seed."""
    if channel.noise is not Noise.BABBLE:
        return []
    others = [c.path for c in clips if c.speaker_id != clips[i].speaker_id]
    if not others:
        raise ValueError("babble noise needs clips of other speakers in the same extraction")
    rng = clip_rng(clips[i].path.name, "babble")
    return [others[j] for j in rng.choice(len(others), min(BABBLE_VOICES, len(others)), replace=False)]
