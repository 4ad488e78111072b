"""Server-side SVG charts: one point per utterance, the threshold line where it belongs, safe text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from dashboard.charts import ChartPoint, MeasureRow, measures_plot, probability_chart

SVG = "{http://www.w3.org/2000/svg}"


def _points(n: int) -> list[ChartPoint]:
    return [ChartPoint(seq=i, start_s=4.0 * i, end_s=4.0 * i + 3.0, probability=0.1 + 0.2 * i) for i in range(n)]


def _attr(el: ET.Element, name: str) -> str:
    """An attribute the chart must have written."""
    value = el.get(name)
    assert value is not None, f"{el.tag} has no {name}"
    return value


def _num(el: ET.Element, name: str) -> float:
    return float(_attr(el, name))


def _find(el: ET.Element, path: str) -> ET.Element:
    """A child the chart must have written."""
    found = el.find(path)
    assert found is not None, f"{el.tag} has no {path}"
    return found


def test_probability_chart_has_one_point_per_utterance_and_the_threshold_line() -> None:
    svg = ET.fromstring(str(probability_chart(_points(4), 0.6)))
    circles = svg.findall(f"{SVG}circle")
    assert len(circles) == 4
    assert [c.get("data-seq") for c in circles] == ["0", "1", "2", "3"]
    [threshold] = [line for line in svg.findall(f"{SVG}line") if line.get("class") == "threshold"]
    # the plot spans y 16..204 (height 240, margins 16 and 36) for probabilities 1..0
    assert _num(threshold, "y1") == _num(threshold, "y2") == 16 + 188 * (1 - 0.6)
    # points above the threshold are marked, and sit above (smaller y than) the line
    over = [c for c in circles if "over" in c.get("class", "").split()]
    assert [c.get("data-seq") for c in over] == ["3"]
    assert _num(over[0], "cy") < _num(threshold, "y1")
    assert svg.get("role") == "img" and svg.find(f"{SVG}title") is not None


def test_points_are_placed_by_time_and_probability() -> None:
    svg = ET.fromstring(str(probability_chart(_points(3), None, duration_s=40.0)))
    cx = [_num(c, "cx") for c in svg.findall(f"{SVG}circle")]
    cy = [_num(c, "cy") for c in svg.findall(f"{SVG}circle")]
    assert cx == sorted(cx) and cy == sorted(cy, reverse=True)  # later to the right, likelier higher
    assert not [line for line in svg.findall(f"{SVG}line") if line.get("class") == "threshold"]
    desc = _find(svg, f"{SVG}desc").text
    assert desc is not None and "no threshold known" in desc


def test_empty_chart_says_so_and_other_speakers_are_hollow() -> None:
    empty = str(probability_chart([], 0.5))
    assert "no utterance scored yet" in empty and "<circle" not in empty
    mixed = str(probability_chart([ChartPoint(0, 0, 2, 0.3, speaker_mismatch=True), ChartPoint(1, 3, 5, 0.4)], 0.5))
    assert mixed.count("other-speaker") == 1 and "speaker check failed" in mixed


def test_chart_text_is_escaped() -> None:
    svg = str(probability_chart(_points(1), 0.5, title="<script>alert(1)</script>"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)  # still well-formed


def test_measures_plot_places_the_patient_by_population_standard_deviations() -> None:
    rows = [
        MeasureRow("pitch", "pitch", "semitones", patient=32.0, population_mean=30.0, population_sd=2.0),
        MeasureRow("loudness", "loudness", "dB", patient=60.0, population_mean=70.0, population_sd=1.0),
        MeasureRow("hnr", "harmonics-to-noise ratio", "dB", patient=None, population_mean=8.0, population_sd=None),
    ]
    svg = ET.fromstring(str(measures_plot(rows)))
    groups = {g.get("data-measure"): g for g in svg.findall(f"{SVG}g")}
    assert list(groups) == ["pitch", "loudness", "hnr"]
    pitch_dot = _find(groups["pitch"], f"{SVG}circle")
    loud_dot = _find(groups["loudness"], f"{SVG}circle")
    assert pitch_dot.get("data-z") == "1.00"
    assert loud_dot.get("data-z") == "-10.00" and "clipped" in _attr(loud_dot, "class")
    assert groups["hnr"].find(f"{SVG}circle") is None  # no patient value: population only
    zero = next(line for line in svg.findall(f"{SVG}line") if line.get("class") == "axis-zero")
    assert _num(pitch_dot, "cx") > _num(zero, "x1") > _num(loud_dot, "cx")
    assert re.search(r"32\.0 vs 30\.0 ± 2\.0", str(measures_plot(rows)))


def test_baseline_status_wording() -> None:
    from dashboard.formatting import baseline_status, baseline_text
    from dashboard.store import BaselineStatus

    assert baseline_text(None) == "none yet"
    assert baseline_status(0, 0) == "none yet"
    assert baseline_status(1, 1) == "1 utterance over 1 call"
    assert baseline_status(12, 3) == "12 utterances over 3 calls"
    enrolled = BaselineStatus(baseline_id=1, n_utterances=2, n_calls=0, updated_at=datetime.now(UTC), model_version="m")
    assert baseline_text(enrolled) == "2 utterances from enrolment"
