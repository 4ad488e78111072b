"""Embedders turn telephone-channel audio into fixed-size vectors; this package builds one by name.

The interface every embedder implements is :class:`~analysis.embedders.base.Embedder` (in ``base``,
re-exported here); each embedder lives in a module of its own. This module is the registry: it names
the built-in embedders and imports an embedder's module only when one is built (each module keeps
its heavy backend inside methods, so even then nothing heavy loads until first use). The embedder
modules import ``base`` only, never this module, so there is no import cycle.

Code outside this package imports from here: ``from analysis.embedders import get_embedder, Embedder``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from analysis.embedders.base import Embedder, EmbedderSources, EmbedderUnavailable
from analysis.embedders.fusion import ConcatEmbedder

__all__ = ["Embedder", "EmbedderSources", "EmbedderUnavailable", "available", "get_embedder"]

Factory = Callable[..., Embedder]
Needs = Callable[[EmbedderSources], dict[str, Any]]


@cache
def _builtin() -> dict[str, tuple[Factory, Needs | None]]:
    """Every built-in embedder by name: its constructor and what it takes from :class:`EmbedderSources`."""
    from analysis.embedders.clap import ClapEmbedder
    from analysis.embedders.hear import HearEmbedder, options_from_sources
    from analysis.embedders.opensmile_features import compare_embedder, egemaps_embedder
    from analysis.embedders.speaker import SpeakerEmbedder, SpeakerSpreadEmbedder

    return {
        "clap": (ClapEmbedder, None),
        "compare": (compare_embedder, None),
        "egemaps": (egemaps_embedder, None),
        "hear": (HearEmbedder, options_from_sources),
        "speaker": (SpeakerEmbedder, None),
        "speaker-spread": (SpeakerSpreadEmbedder, None),
    }


def available() -> list[str]:
    return sorted(_builtin())


def get_embedder(name: str, sources: EmbedderSources | None = None, **options: Any) -> Embedder:
    """Build the embedder registered as ``name``: egemaps, compare, speaker, speaker-spread, clap or hear.

    ``a+b`` concatenates embedders (e.g. ``egemaps+speaker``); options go to every part, and each
    part takes what it needs from ``sources``.
    """
    if "+" in name:
        return ConcatEmbedder([get_embedder(part, sources, **options) for part in name.split("+")])
    registry = _builtin()
    try:
        factory, needs = registry[name]
    except KeyError:
        raise EmbedderUnavailable(f"unknown embedder {name!r}; known: {', '.join(sorted(registry))}") from None
    if needs is not None:
        options = {**needs(sources or EmbedderSources()), **options}
    return factory(**options)
