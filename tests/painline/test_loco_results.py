"""The leave-one-corpus-out results committed in ``bench/results/``, held to the four-languages issue.

LOCO on the live path (``detection.json`` -> ``loco``) is the headline; the robustness rows come from
``bench.detection.loco_offline --robustness`` (``loco_research.json`` -> the shipped model's variant,
read off its card). Targets the
committed runs miss are strict expected failures carrying the measured figure, so a miss stays
visible and a rerun that meets a target must drop its mark.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.model import card_path
from bench.detection.__main__ import LIVE_TASKS, LOCO_BEGIN, LOCO_TARGETS
from bench.detection.loco_offline import DAMAGES, ROBUST_BEGIN, ROBUST_ROW, Variant
from painline.config import Settings
from painline.live_path import LOCO_ROWS

ROOT = Path(__file__).resolve().parents[2]
DETECTION = ROOT / "bench" / "results" / "detection.json"
RESEARCH = ROOT / "bench" / "results" / "loco_research.json"
DOC = ROOT / "docs" / "detection.md"

NOISE_BUDGET = 0.05  # 10 dB SNR may cost at most this much call AUC
GAIN_BUDGET = 0.01  # +-12 dB at most this much

LIVE = "live LOCO AUC"
BABBLE = "four other voices at 10 dB SNR; why eGeMAPS follows them is not yet analysed"
LOUD = "+12 dB drives loud speech into clipping before the codec (the likely cause, not isolated)"
QUIET = "-12 dB leaves quiet utterances unheard by the VAD (a level-robust VAD is open)"
KNOWN_MISSES: dict[tuple[str, str], str] = {
    ("ravdess-distress", "call_8_baseline_3"): f"{LIVE} 0.859, short by 0.041",
    ("ased-distress", "call_8_baseline_3"): f"{LIVE} 0.814, short by 0.086",
    ("spanish-distress", "call_8_baseline_3"): f"{LIVE} 0.783, short by 0.117 (16 non-actors)",
    ("ravdess-distress", "baseline_3"): f"{LIVE} 0.703, short by 0.097",
    ("nemo-distress", "baseline_3"): f"{LIVE} 0.769, short by 0.031",
    ("ased-distress", "baseline_3"): f"{LIVE} 0.674, short by 0.126",
    ("spanish-distress", "baseline_3"): f"{LIVE} 0.684, short by 0.116",
    ("ravdess-distress", "white_10db"): "costs 0.052, 69 clips unheard by the VAD under the noise",
    ("ased-distress", "babble_10db"): f"costs 0.127; {BABBLE}",
    ("spanish-distress", "babble_10db"): f"costs 0.092; {BABBLE}",
    ("ravdess-distress", "gain_plus_12db"): f"costs 0.018; {LOUD}",
    ("ased-distress", "gain_plus_12db"): f"costs 0.034; {LOUD}",
    ("spanish-distress", "gain_plus_12db"): f"costs 0.014; {LOUD}",
    ("ravdess-distress", "gain_minus_12db"): f"costs 0.033, 219 clips unheard; {QUIET}",
}
"""(corpus task, target) pairs the committed runs miss, with the measured figure and why."""


def loco() -> dict:
    return json.loads(DETECTION.read_text())["loco"]


def robustness() -> dict:
    """The robustness rows of the variant the shipped model was trained as."""
    shipped = Variant.of_card(json.loads(card_path(Settings().model_path).read_text()))
    return json.loads(RESEARCH.read_text())[str(shipped)]


def _mark(request: pytest.FixtureRequest, task: str, target: str) -> None:
    if (task, target) in KNOWN_MISSES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[(task, target)]))


def test_the_detection_doc_leads_with_leave_one_corpus_out_and_its_robustness() -> None:
    text = DOC.read_text()
    first = text.index("<!--")
    assert text.index(LOCO_BEGIN) == first, "docs/detection.md must lead with the LOCO section"
    assert text.index(LOCO_BEGIN) < text.index(ROBUST_BEGIN) < text.index("<!-- live-path")


def test_every_speech_corpus_was_left_out_in_turn_on_the_live_path() -> None:
    results = loco()
    assert set(results) == set(LIVE_TASKS)
    for task, r in results.items():
        assert task not in r["trained_on"] and len(r["trained_on"]) == len(LIVE_TASKS) - 1
        assert r["mode"] == "full"
        for row in LOCO_ROWS:
            lo, hi = r[row]["auc_ci"]
            assert lo <= r[row]["auc"] <= hi, (task, row)


@pytest.mark.parametrize("target", list(LOCO_TARGETS))
@pytest.mark.parametrize("task", LIVE_TASKS)
def test_loco_meets_its_targets(task: str, target: str, request: pytest.FixtureRequest) -> None:
    _mark(request, task, target)
    assert loco()[task][target]["auc"] >= LOCO_TARGETS[target]


def test_every_robustness_row_was_measured_on_every_corpus() -> None:
    rows = robustness()
    assert set(rows) == set(LIVE_TASKS)
    for task, r in rows.items():
        assert set(r["robustness"]) == set(DAMAGES), task
        for damage in r["robustness"].values():
            assert 0.0 <= damage["auc"][ROBUST_ROW] <= 1.0


@pytest.mark.parametrize("damage", ["white_10db", "babble_10db", "gain_plus_12db", "gain_minus_12db"])
@pytest.mark.parametrize("task", LIVE_TASKS)
def test_damage_costs_at_most_its_budget(task: str, damage: str, request: pytest.FixtureRequest) -> None:
    _mark(request, task, damage)
    r = robustness()[task]
    cost = r["auc"][ROBUST_ROW] - r["robustness"][damage]["auc"][ROBUST_ROW]
    assert cost <= (NOISE_BUDGET if "db" in damage and "gain" not in damage else GAIN_BUDGET)
