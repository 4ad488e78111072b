"""`painline evaluate` and `painline train` end to end on a few RAVDESS speakers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from analysis.model import PainModel, card_path
from painline.research import Pooling, TaskData, Weighting, pooling_weights

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = (REPO / ".." / "shared" / "data").resolve()

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA_DIR / "ravdess").is_dir(), reason=f"RAVDESS not found under {DATA_DIR}"),
]


@pytest.fixture(autouse=True)
def _shared_feature_cache(monkeypatch) -> None:
    """Reuse the repository's feature cache (extraction dominates) wherever pytest is started from."""
    monkeypatch.setenv("PAINLINE_CACHE_DIR", str(REPO / ".cache"))
    monkeypatch.setenv("PAINLINE_DATA_DIR", str(DATA_DIR))


def test_evaluate_prints_protocol_table_and_writes_json(tmp_path: Path, capsys) -> None:
    from painline.research import evaluate_main

    out = tmp_path / "eval"
    rc = evaluate_main(["--task", "ravdess-distress", "--max-speakers", "6", "--boot", "50", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0] for line in printed.splitlines() if line.strip()}
    assert {"random", "person", "baseline_3", "call_3"} <= rows, printed
    assert "task ravdess-distress" in printed
    result = json.loads((out / "ravdess-distress.json").read_text())
    assert result["task"] == "ravdess-distress"
    protocols = result["protocols"]
    for name in ("random", "person", "baseline_3", "call_3", "call_none", "oracle"):
        assert protocols[name] is not None, name
        assert 0.0 <= protocols[name]["auc"] <= 1.0
    # 6 speakers x ~60 clips; the person protocol scores every clip exactly once
    assert protocols["person"]["n_clips"] == result["n_clips"] and 300 < result["n_clips"] < 400
    # baselines score the same clips as their no-baseline twin (3 draws, enrolment clips removed)
    assert protocols["baseline_3"]["n_clips"] == protocols["person_same_clips_3"]["n_clips"]
    assert result["n_clips"] < protocols["baseline_3"]["n_clips"] < 3 * result["n_clips"]
    lo, hi = protocols["person"]["auc_ci"]
    assert lo <= protocols["person"]["auc"] <= hi


def test_evaluate_writes_roc_calibration_and_per_speaker_figures(tmp_path: Path, capsys) -> None:
    """Every protocol that scored clips gets its three PNG figures beside the JSON."""
    from painline.research import evaluate_main

    out = tmp_path / "eval"
    rc = evaluate_main(["--task", "ravdess-distress", "--max-speakers", "6", "--boot", "20", "--out", str(out)])
    assert rc == 0
    protocols = json.loads((out / "ravdess-distress.json").read_text())["protocols"]
    scored = [name for name, summary in protocols.items() if summary is not None]
    assert {"random", "person", "baseline_3", "call_3"} <= set(scored)
    expected = {
        out / f"ravdess-distress-{name}-{kind}.png" for name in scored for kind in ("roc", "calibration", "speakers")
    }
    assert set(out.glob("*.png")) == expected
    for png in expected:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert f"wrote {len(expected)} figures" in capsys.readouterr().out


def test_train_writes_an_artifact_the_loader_accepts(tmp_path: Path, capsys) -> None:
    from painline.research import train_main

    out = tmp_path / "models" / "ravdess.joblib"
    rc = train_main(["--task", "ravdess-distress", "--max-speakers", "6", "--out", str(out)])
    assert rc == 0
    model = PainModel.load(out, expect_embedder="egemaps", expect_dim=88)
    assert model.embedder_name == "egemaps" and model.dim == 88
    card = json.loads(card_path(out).read_text())
    assert card["model_version"] == model.version
    assert card["channel"] == {"telephone": True, "rms_normalise": True, "segment": True}  # as calls cut it
    assert card["training_data"]["corpora"][0]["corpus"] == "ravdess"
    assert model.version in capsys.readouterr().out
    p = model.predict_proba(np.zeros((2, 88)) + model.normaliser.population.mean)  # type: ignore[union-attr]
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))


def test_a_label_the_corpus_lacks_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[ased-with-disgust]\ncorpus = "ased"\npositive = ["angry", "disgust"]\nnormal = ["neutral"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "evaluate", "--task", "ased-with-disgust", "--tasks", str(tasks)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "painline: task 'ased-with-disgust': labels ['disgust'] do not occur in corpus 'ased'"
    ]


def test_a_pooled_model_with_a_leave_one_corpus_out_threshold(tmp_path: Path, capsys) -> None:
    """Two corpora, aligned, threshold on each held out in turn: the card says where it came from and how it held."""
    from painline.research import train_main

    out = tmp_path / "pooled.joblib"
    rc = train_main(
        [
            "--task",
            "ravdess-distress",
            "--task",
            "nemo-distress",
            "--max-speakers",
            "4",
            "--aligned",
            "--loco-threshold",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    model = PainModel.load(out)
    card = json.loads(card_path(out).read_text())
    threshold = card["threshold"]
    assert "leave-one-corpus-out" in threshold["method"]
    assert set(threshold["held_out_specificity"]) == {"ravdess", "nemo"}
    # the pooled threshold reaches the target on the pooled predictions, so on at least one corpus
    assert max(threshold["held_out_specificity"].values()) >= 0.9
    assert card["training"]["threshold_from"] == "leave-one-corpus-out"
    assert card["training_data"]["corpora_aligned"] is True
    assert [c["licence"] for c in card["training_data"]["corpora"]] == [
        "CC BY-NC-SA 4.0 (Livingstone & Russo 2018)",
        "CC BY-NC-SA 4.0 (Christop 2024, amu-cai)",
    ]
    assert model.threshold == threshold["value"] and card["model_version"] == model.version
    assert "leave-one-corpus-out predictions" in capsys.readouterr().out


def test_a_leave_one_corpus_out_threshold_needs_two_tasks(tmp_path: Path) -> None:
    from painline.research import train_main

    with pytest.raises(SystemExit, match="at least two tasks"):
        train_main(
            [
                "--task",
                "ravdess-distress",
                "--max-speakers",
                "4",
                "--loco-threshold",
                "--out",
                str(tmp_path / "m.joblib"),
            ]
        )


def _part(name: str, clips_per_speaker: list[int]) -> TaskData:
    groups = np.repeat([f"{name}{i}" for i in range(len(clips_per_speaker))], clips_per_speaker)
    n = len(groups)
    return TaskData(
        task=cast(Any, None),
        dataset=cast(Any, None),
        clips=[],
        X=np.zeros((n, 2)),
        y=np.arange(n) % 2,
        groups=groups,
        normal=np.arange(n) % 2 == 0,
    )


def test_pooling_weights_make_each_speaker_or_each_corpus_count_the_same() -> None:
    parts = [_part("a", [30, 10]), _part("b", [5, 5, 5, 5])]
    assert pooling_weights(parts, Weighting.CLIPS) is None
    groups = np.concatenate([p.groups for p in parts])
    corpus = np.repeat([0, 1], [40, 20])
    for weighting, unit in ((Weighting.SPEAKERS, groups), (Weighting.CORPORA, corpus)):
        w = pooling_weights(parts, weighting)
        assert w is not None and w.mean() == pytest.approx(1.0)
        totals = [w[unit == u].sum() for u in np.unique(unit)]
        assert totals == pytest.approx([totals[0]] * len(totals)), weighting


def test_vocalisations_join_every_fold_but_never_vote_on_the_threshold(tmp_path: Path) -> None:
    """--extra-task trains on the vocalisations in every fit; only the speech corpora are held out."""
    from painline.research import train_main

    out, folds = tmp_path / "vocal.joblib", tmp_path / "folds"
    args = ["--task", "ravdess-distress", "--task", "nemo-distress", "--extra-task", "nonverbal-distress"]
    args += ["--max-speakers", "4", "--aligned", "--weighting", "corpora", "--loco-threshold"]
    assert train_main([*args, "--fold-models", str(folds), "--out", str(out)]) == 0
    card = json.loads(card_path(out).read_text())
    data = card["training_data"]
    assert [c["corpus"] for c in data["corpora"]] == ["ravdess", "nemo", "nonverbal"]
    assert data["extra_tasks"] == ["nonverbal-distress"] and data["weighting"] == "corpora"
    assert data["reproduce"].endswith("--extra-task nonverbal-distress --aligned --weighting corpora --loco-threshold")
    assert set(card["threshold"]["held_out_specificity"]) == {"ravdess", "nemo"}
    # each fold model heard the vocalisations and the speech corpus that was not held out
    for held, other in (("ravdess", "nemo"), ("nemo", "ravdess")):
        fold = json.loads(card_path(folds / f"{held}-distress.joblib").read_text())
        assert fold["task"]["name"] == f"{other}-distress+nonverbal-distress"
        assert Pooling.from_card(fold["training_data"]) == Pooling(True, Weighting.CORPORA)
    # a second run with the same recipe reuses the fold models; another pooling refits them
    saved = {f: f.stat().st_mtime_ns for f in folds.glob("*.joblib")}
    assert train_main([*args, "--fold-models", str(folds), "--out", str(out)]) == 0
    assert {f: f.stat().st_mtime_ns for f in folds.glob("*.joblib")} == saved
    reweighted = [a if a != "corpora" else "speakers" for a in args]
    assert train_main([*reweighted, "--fold-models", str(folds), "--out", str(out)]) == 0
    assert all(f.stat().st_mtime_ns != t for f, t in saved.items())


def test_the_live_loco_deploys_the_fold_model_painline_train_kept(tmp_path: Path) -> None:
    """Shared ``--fold-models``: the live LOCO figures measure the models the LOCO threshold was chosen on."""
    from painline.config import Settings
    from painline.live_path import loco_model
    from painline.research import train_main

    out, folds = tmp_path / "vocal.joblib", tmp_path / "folds"
    args = ["--task", "ravdess-distress", "--task", "nemo-distress", "--extra-task", "nonverbal-distress"]
    args += ["--max-speakers", "4", "--aligned", "--weighting", "corpora", "--loco-threshold"]
    assert train_main([*args, "--fold-models", str(folds), "--out", str(out)]) == 0
    fold = folds / "nemo-distress.joblib"
    kept, version = fold.stat().st_mtime_ns, PainModel.load(fold).version
    settings = Settings.from_env()
    recipe: dict[str, Any] = {"max_speakers": 4, "extra_tasks": ["nonverbal-distress"], "fold_dir": folds}
    test, model = loco_model(
        "nemo-distress", ["ravdess-distress"], settings, pooling=Pooling(True, Weighting.CORPORA), **recipe
    )
    assert model.version == version and fold.stat().st_mtime_ns == kept
    assert test.task.name == "nemo-distress" and len(np.unique(test.groups)) == 4
    # another pooling is another recipe: the live LOCO fits its own fold model and keeps it instead
    _, other = loco_model("nemo-distress", ["ravdess-distress"], settings, **recipe)
    assert other.version != version and PainModel.load(fold).version == other.version
