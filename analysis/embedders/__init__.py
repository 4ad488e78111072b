"""Embedders turn telephone-channel audio into fixed-size vectors; see ``base`` for the interface."""
