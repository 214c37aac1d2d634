"""The Predict tab's chart: the three outcome probabilities of one answer, the 30-day bar in its risk band's colour.

The band is the one the API returned (``risk_band``); the page never recomputes it, since only the API knows
its cut points (``RISK_BAND_THRESHOLDS``).
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import pandas as pd

from readmission_ui.labels import OUTCOME_LABELS

RISK_BANDS = ("low", "medium", "high")
BAND_COLOURS: dict[str, str] = {"low": "#2e7d32", "medium": "#ef8c00", "high": "#c62828"}  # green, amber, red
BAND_TEXT_COLOURS: dict[str, str] = {"low": "green", "medium": "orange", "high": "red"}  # Streamlit's Markdown names
OTHER_OUTCOME = "other outcomes"
OTHER_OUTCOME_COLOUR = "#9e9e9e"


def band_key(band: str) -> str:
    """The legend entry of the 30-day bar in ``band``."""
    return f"within 30 days, {band} risk"


def probability_rows(probabilities: Mapping[str, float], band: str) -> pd.DataFrame:
    """One row per outcome in clinical order: its label, probability and legend entry (``shown as``)."""
    if band not in BAND_COLOURS:
        raise ValueError(f"unknown risk band {band!r}; the API answers one of {', '.join(RISK_BANDS)}")
    return pd.DataFrame(
        {
            "outcome": list(OUTCOME_LABELS.values()),
            "probability": [float(probabilities[code]) for code in OUTCOME_LABELS],
            "shown as": [OTHER_OUTCOME, OTHER_OUTCOME, band_key(band)],
        }
    )


def probability_chart(probabilities: Mapping[str, float], band: str) -> alt.LayerChart:
    """Horizontal bars of the outcome probabilities on a fixed 0-1 axis, each bar labelled with its percentage.

    The 30-day bar takes the colour of ``band``; the legend lists every band's colour, so the scale is readable
    whichever band this answer is in.
    """
    rows = probability_rows(probabilities, band)
    base = alt.Chart(rows).encode(
        x=alt.X(
            "probability:Q",
            title="Probability",
            scale=alt.Scale(domain=[0, 1]),
            axis=alt.Axis(values=[0, 0.2, 0.4, 0.6, 0.8, 1], format=".1f"),
        ),
        y=alt.Y("outcome:N", title="Readmission", sort=list(OUTCOME_LABELS.values())),
        tooltip=[alt.Tooltip("outcome:N"), alt.Tooltip("probability:Q", format=".1%")],
    )
    colour = alt.Color(
        "shown as:N",
        scale=alt.Scale(
            domain=[*(band_key(b) for b in RISK_BANDS), OTHER_OUTCOME],
            range=[*(BAND_COLOURS[b] for b in RISK_BANDS), OTHER_OUTCOME_COLOUR],
        ),
        legend=alt.Legend(title=None, orient="bottom", labelLimit=0),
    )
    bars = base.mark_bar().encode(color=colour)
    labels = base.mark_text(align="left", dx=4).encode(text=alt.Text("probability:Q", format=".1%"))
    return alt.LayerChart(layer=[bars, labels], height=260)
