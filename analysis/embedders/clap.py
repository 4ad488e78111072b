"""General-audio embeddings from a CLAP audio tower (transformers ``ClapModel``).

CLAP was trained on sound events as well as speech, so its space knows groans, cries and strained
breathing, which speech-only encoders flatten away. Only the audio tower is used; the text tower is
loaded with the checkpoint but never run.

Determinism: the CLAP feature extractor crops clips longer than its window (10 s for LAION
checkpoints) at a *random* offset. That would give a caller a different vector on every run, so
long clips are cut here into the fewest full-length windows that cover them (evenly spaced, so
they overlap a little), each window is embedded, and the window embeddings are averaged (then
re-normalised). Short clips are repeat-padded by the
extractor, as in CLAP's training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.embedders.base import Embedder, EmbedderUnavailable

CLAP_RATE = 48000
DEFAULT_MODEL = "laion/clap-htsat-unfused"


def _looks_like_path(model: str) -> bool:
    """A hub id is ``org/name``; anything absolute, relative or home-based is meant as a folder."""
    return model.startswith(("/", "./", "../", "~", "\\")) or Path(model).is_absolute() or model.count("/") > 1


def _l2_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))


class ClapEmbedder(Embedder):
    """One L2-normalised CLAP audio embedding per clip; dim is the checkpoint's ``projection_dim``.

    ``model`` is a local folder written by ``save_pretrained`` (model + feature extractor) or a
    Hugging Face hub id. ``batch_size`` bounds how many windows go through the network at once,
    which bounds memory on a small worker.
    """

    name = "clap"
    sample_rate = CLAP_RATE

    def __init__(self, model: str | Path = DEFAULT_MODEL, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_ref = str(model)
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._extractor: Any = None

    def _load(self) -> tuple[Any, Any]:
        """Load model and feature extractor once; torch and transformers are imported only here."""
        if self._model is not None:
            return self._model, self._extractor
        try:
            from transformers import ClapFeatureExtractor, ClapModel
        except ImportError as exc:
            raise EmbedderUnavailable(
                "the 'clap' embedder needs transformers and torch: pip install 'painline[clap]'"
            ) from exc
        ref = self.model_ref
        local = Path(ref).expanduser()
        if local.exists():
            ref = str(local)
        elif _looks_like_path(ref):
            raise EmbedderUnavailable(f"no CLAP model at {ref}: expected a folder written by save_pretrained")
        try:
            model = ClapModel.from_pretrained(ref)
            extractor = ClapFeatureExtractor.from_pretrained(ref)
        except Exception as exc:  # OSError offline, ValueError/EnvironmentError on a broken folder
            raise EmbedderUnavailable(
                f"could not load CLAP model {ref!r} ({type(exc).__name__}: {exc}); "
                "if the hub is unreachable, download it once and pass model=<local folder>"
            ) from exc
        model.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() untyped
        if int(extractor.sampling_rate) != self.sample_rate:
            raise EmbedderUnavailable(
                f"CLAP feature extractor at {ref!r} expects {extractor.sampling_rate} Hz, "
                f"this embedder feeds {self.sample_rate} Hz"
            )
        self._model, self._extractor = model, extractor
        return model, extractor

    @property
    def dim(self) -> int:
        model, _ = self._load()
        return int(model.config.projection_dim)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_ref}

    def _windows(self, clip: np.ndarray, window: int) -> list[np.ndarray]:
        """Full-length windows spread evenly from start to end, overlapping just enough to cover it.

        Evenly spread rather than back-to-back so no window is a sliver that the extractor would
        repeat-pad into a buzz, and every window carries equal weight in the average.
        """
        if len(clip) <= window:
            return [clip]
        count = -(-len(clip) // window)
        starts = np.linspace(0, len(clip) - window, count).round().astype(int)
        return [clip[s : s + window] for s in starts]

    def _embed_native(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        model, extractor = self._load()
        fusion = bool(getattr(model.config.audio_config, "enable_fusion", False))
        window = int(extractor.nb_max_samples)
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for i, clip in enumerate(clips):
            x = np.asarray(clip, dtype=np.float32)
            if len(x) == 0:
                x = np.zeros(1, dtype=np.float32)  # the extractor divides by the length when padding
            for w in self._windows(x, window):
                pieces.append(w)
                owner.append(i)

        rows: list[np.ndarray] = []
        for start in range(0, len(pieces), self.batch_size):
            batch = pieces[start : start + self.batch_size]
            feats = extractor(
                batch,
                sampling_rate=self.sample_rate,
                truncation="fusion" if fusion else "rand_trunc",
                return_tensors="pt",
            )
            # no window is longer than the extractor's limit, so no clip is "longer"; the extractor
            # would otherwise mark a random one as longer for fusion checkpoints (a training trick)
            is_longer = torch.zeros_like(feats["is_longer"], dtype=torch.bool)
            with torch.inference_mode():
                out = model.get_audio_features(input_features=feats["input_features"], is_longer=is_longer)
            # transformers 4.x returns the projected tensor, 5.x a model output holding it
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            rows.append(emb.detach().cpu().numpy().astype(np.float64))

        per_window = _l2_rows(np.concatenate(rows, axis=0))
        pooled = np.zeros((len(clips), per_window.shape[1]), dtype=np.float64)
        np.add.at(pooled, np.asarray(owner), per_window)
        return _l2_rows(pooled).astype(np.float32)
