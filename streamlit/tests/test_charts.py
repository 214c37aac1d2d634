"""The Predict tab's chart as Vega-Lite: outcomes in clinical order, a fixed 0-1 probability axis, the 30-day
bar in the colour of the band the API returned (the page test checks the same spec as the page renders it)."""

from __future__ import annotations

from typing import Any

import pytest

from readmission import schema
from readmission_ui.charts import BAND_COLOURS, OTHER_OUTCOME_COLOUR, RISK_BANDS, probability_chart

ANSWER = {"NO": 0.9, ">30": 0.07, "<30": 0.03}


def _bars(band: str, probabilities: dict[str, float] = ANSWER) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The bar layer of the chart's spec and its rows."""
    spec = probability_chart(probabilities, band).to_dict()
    rows = next(iter(spec["datasets"].values()))
    bars = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "bar")
    return bars, rows


def _colours(bars: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The colour each row is drawn in, through the colour scale."""
    colour = bars["encoding"]["color"]
    shade = dict(zip(colour["scale"]["domain"], colour["scale"]["range"], strict=True))
    return [shade[row[colour["field"]]] for row in rows]


@pytest.mark.parametrize("band", RISK_BANDS)
def test_the_30_day_bar_takes_the_colour_of_the_band_the_api_returned(band: str) -> None:
    bars, rows = _bars(band)
    assert _colours(bars, rows) == [OTHER_OUTCOME_COLOUR, OTHER_OUTCOME_COLOUR, BAND_COLOURS[band]]
    assert f"{band} risk" in rows[2]["shown as"]  # the legend names it


def test_the_bands_have_distinct_colours_unlike_the_other_outcomes() -> None:
    assert len({*BAND_COLOURS.values(), OTHER_OUTCOME_COLOUR}) == len(RISK_BANDS) + 1


def test_outcomes_follow_the_contracts_order_on_a_labelled_0_to_1_axis() -> None:
    bars, rows = _bars("low", {"NO": 0.02, ">30": 0.01, "<30": 0.97})  # the largest bar does not set the scale
    x, y = bars["encoding"]["x"], bars["encoding"]["y"]
    assert [row["probability"] for row in rows] == [0.02, 0.01, 0.97]  # schema.TARGET_LABELS order
    assert [row["outcome"] for row in rows] == y["sort"] == ["No readmission", "After 30 days", "Within 30 days"]
    assert schema.TARGET_LABELS == ("NO", ">30", "<30")
    assert (x["field"], x["title"], x["scale"]["domain"]) == ("probability", "Probability", [0, 1])
    assert (y["field"], y["title"]) == ("outcome", "Readmission")


def test_a_band_the_page_does_not_know_is_named() -> None:
    with pytest.raises(ValueError, match="unknown risk band 'severe'; the API answers one of low, medium, high"):
        probability_chart(ANSWER, "severe")
