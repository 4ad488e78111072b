"""Task definitions read from configuration: which labels are pain, which are a speaker's normal state.

A task maps a corpus's labels to classes. Binary tasks have classes ``0`` (no pain) and ``1``
(pain); multi-class tasks keep named classes and name the one that counts as pain, so the same
protocols report a pain-vs-rest AUC for them too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.dataset import Dataset


class TaskError(ValueError):
    """A task definition is malformed or does not fit its corpus."""


@dataclass(frozen=True)
class Task:
    name: str
    corpus: str
    classes: dict[str, tuple[str, ...]]  # class name -> corpus labels, in class-index order
    positive_class: str
    normal: tuple[str, ...]  # corpus labels that are a speaker's normal state (empty: non-pain labels)
    licence: str = ""  # the corpus's licence, carried into the card of every model trained on it

    @property
    def is_binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def label_mapping(self) -> dict[str, str]:
        return {label: cls for cls, labels in self.classes.items() for label in labels}

    def select(self, ds: Dataset) -> np.ndarray:
        """Boolean mask of the clips whose label belongs to some class of the task."""
        mapping = self.label_mapping
        return np.array([c.label in mapping for c in ds.clips])

    def class_index(self, labels: np.ndarray) -> np.ndarray:
        names = list(self.classes)
        mapping = self.label_mapping
        return np.array([names.index(mapping[str(lab)]) for lab in labels])

    def pain(self, labels: np.ndarray) -> np.ndarray:
        """1 where the label belongs to the pain class, else 0."""
        pos = set(self.classes[self.positive_class])
        return np.array([int(str(lab) in pos) for lab in labels])

    def normal_mask(self, labels: np.ndarray) -> np.ndarray:
        return np.isin(labels.astype(str), list(self.normal))


def load_tasks(path: str | Path) -> dict[str, Task]:
    """Parse a tasks TOML file (see painline/tasks.toml for the format)."""
    raw = tomllib.loads(Path(path).read_text())
    return {name: _parse(name, spec) for name, spec in raw.items()}


def _labels(task: str, key: str, value: object) -> tuple[str, ...]:
    """A list of label strings; a bare string is a mistake (it would be split into letters)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskError(f"task {task!r}: {key} must be a list of labels, got {value!r}")
    return tuple(value)


def _parse(name: str, spec: dict[str, Any]) -> Task:
    try:
        corpus = spec["corpus"]
        if "classes" in spec:
            classes = {k: _labels(name, f"classes.{k}", v) for k, v in spec["classes"].items()}
            positive_class = spec["positive_class"]
        else:
            classes = {
                "no_pain": _labels(name, "negative", spec.get("negative", [])),
                "pain": _labels(name, "positive", spec["positive"]),
            }
            positive_class = "pain"
    except KeyError as exc:
        raise TaskError(f"task {name!r} lacks {exc.args[0]!r}") from None
    if positive_class not in classes:
        raise TaskError(f"task {name!r}: positive_class {positive_class!r} is not one of {list(classes)}")
    seen: dict[str, str] = {}
    for cls, labels in classes.items():
        for label in labels:
            if label in seen:
                raise TaskError(f"task {name!r}: label {label!r} is in both {seen[label]!r} and {cls!r}")
            seen[label] = cls
    normal_spec = spec.get("normal", "negative")
    # "negative" (the default): a speaker's normal state is any of their non-pain clips; bind() fills it
    normal = () if normal_spec == "negative" else _labels(name, "normal", normal_spec)
    painful = set(classes[positive_class]) & set(normal)
    if painful:
        raise TaskError(f"task {name!r}: pain label(s) {sorted(painful)} cannot be a speaker's normal state")
    licence = spec.get("licence", "")
    if not isinstance(licence, str):
        raise TaskError(f"task {name!r}: licence must be a string, got {licence!r}")
    return Task(name, corpus, classes, positive_class, normal, licence)


def bind(task: Task, ds: Dataset) -> Task:
    """Fill an open negative class ("everything else") from the corpus's labels, and check the labels."""
    known = set(ds.labels.tolist())
    classes = dict(task.classes)
    for cls, labels in classes.items():
        if not labels:
            others = {lab for c, labs in classes.items() if c != cls for lab in labs}
            classes[cls] = tuple(sorted(known - others))
    missing = ({lab for labs in classes.values() for lab in labs} | set(task.normal)) - known
    if missing:
        raise TaskError(f"task {task.name!r}: labels {sorted(missing)} do not occur in corpus {ds.name!r}")
    normal = task.normal or tuple(lab for c, labs in classes.items() if c != task.positive_class for lab in labs)
    return Task(task.name, task.corpus, classes, task.positive_class, normal, task.licence)
