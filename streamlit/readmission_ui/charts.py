"""The Predict tab's charts: the three outcome probabilities of one answer (the 30-day bar in its risk band's
colour), the risk on the band strip beside the base rate, and the top contributions of its explanation.

The band is the one the API returned (``risk_band``) and the strip's cut points are the API's
(``risk_band_thresholds`` of ``GET /model``); the page never recomputes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import pandas as pd

from readmission_ui.labels import OUTCOME_LABELS, factor_label

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


RAISES_COLOUR, LOWERS_COLOUR = "#c62828", "#2e7d32"  # red raises the 30-day risk, green lowers it
NO_EFFECT_COLOUR = "#9e9e9e"


def factor_rows(explanation: Mapping[str, Any]) -> pd.DataFrame:
    """One row per listed contribution of an answer's ``explanation``, largest first: the feature in words with
    the value sent (``factor``, as the form words it: ``labels.factor_label``), its signed contribution and its
    direction."""
    rows = [
        {
            "factor": factor_label(item["feature"], item["description"], item["value"]),
            "contribution": float(item["contribution"]),
            "effect": item["direction"],  # the API's words: raises the risk, lowers the risk, no effect
        }
        for item in explanation["contributions"]
    ]
    return pd.DataFrame(rows, columns=["factor", "contribution", "effect"])


def factor_chart(explanation: Mapping[str, Any]) -> alt.Chart:
    """Horizontal bars of the top contributions (red: raise the 30-day risk, green: lower it), largest on top,
    on the explanation's scale (log-odds for most models)."""
    rows = factor_rows(explanation)
    scale = "log-odds of the 30-day risk" if explanation["scale"] == "log-odds" else "30-day risk (probability)"
    chart: alt.Chart = (
        alt.Chart(rows)
        .mark_bar()
        .encode(
            x=alt.X("contribution:Q", title=f"Contribution ({scale})"),
            y=alt.Y("factor:N", title=None, sort=None, axis=alt.Axis(labelLimit=460, labelOverlap=False)),
            color=alt.Color(
                "effect:N",
                scale=alt.Scale(
                    domain=["raises the risk", "lowers the risk", "no effect"],
                    range=[RAISES_COLOUR, LOWERS_COLOUR, NO_EFFECT_COLOUR],
                ),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=[alt.Tooltip("factor:N"), alt.Tooltip("contribution:Q", format="+.3f"), alt.Tooltip("effect:N")],
        )
        .properties(height=36 * max(len(rows), 1))
    )
    return chart


def risk_scale_chart(risk: float, base_rate: float | None, thresholds: Sequence[float]) -> alt.LayerChart:
    """The 30-day risk on a strip coloured by the risk bands (cut points ``thresholds``, as the API uses them),
    with a black tick for this encounter and a paler one for the population's base rate when known."""
    top = max(0.6, risk + 0.05, *(t + 0.1 for t in thresholds))
    edges = [0.0, *thresholds, top]
    bands = pd.DataFrame({"band": list(RISK_BANDS), "start": edges[:-1], "end": edges[1:]})
    axis = alt.X("start:Q", title="30-day readmission risk", scale=alt.Scale(domain=[0, top], nice=False),
                 axis=alt.Axis(format=".0%"))  # fmt: skip
    colour = alt.Color(
        "band:N",
        scale=alt.Scale(domain=list(RISK_BANDS), range=[BAND_COLOURS[b] for b in RISK_BANDS]),
        legend=alt.Legend(title="risk band", orient="bottom"),
    )
    strip = (
        alt.Chart(bands)
        .mark_bar(opacity=0.45, height=34)
        .encode(x=axis, x2="end:Q", color=colour, tooltip=["band:N", alt.Tooltip("start:Q", format=".0%")])
    )
    marks = [{"what": "this encounter", "risk": risk}]
    if base_rate is not None:
        marks.append({"what": "base rate", "risk": base_rate})
    ticks = alt.Chart(pd.DataFrame(marks)).encode(x=alt.X("risk:Q", scale=alt.Scale(domain=[0, top], nice=False)))
    lines = ticks.mark_tick(thickness=3, size=44, color="black").encode(
        opacity=alt.Opacity("what:N", scale=alt.Scale(domain=["this encounter", "base rate"], range=[1, 0.5]),
                            legend=None)
    )  # fmt: skip
    labels = ticks.mark_text(align="left", dx=5, dy=-26, fontSize=12).encode(text=alt.Text("what:N"))
    return alt.LayerChart(layer=[strip, lines, labels], height=90)


def explanation_note(explanation: Mapping[str, Any], risk: float) -> str:
    """How the bars add up, in words and, on the log-odds scale, in percentages too: the model's average
    log-odds is an average of log-odds, so its percentage sits below the population's base rate."""
    base, value, other = explanation["base_value"], explanation["value"], explanation["other_features"]
    if explanation["scale"] == "log-odds":
        average = 1 / (1 + math.exp(-base))  # the page's image has no scipy: the logistic function by hand
        start = (
            f"the model's average log-odds {base:+.3f} ({average:.1%}; an average of log-odds, so below the base rate)"
        )
        end = f"this encounter's {value:+.3f} ({explanation['explained_risk']:.1%})"
        how = "Exact contributions on the log-odds scale (TreeSHAP for trees, linear terms for a logistic regression)"
    else:
        start, end = f"the model's average risk {base:.1%}", f"this encounter's {value:.1%}"
        how = "Exact contributions to the probability (TreeSHAP over the forest's trees)"
    note = (
        f"{how}: starting from {start}, every feature's contribution adds up to {end}. "
        f"The {other['count']} features not shown add {other['contribution']:+.3f}."
    )
    if explanation["calibrated"]:
        note += (
            f" This model was recalibrated after training: the bars explain it before its calibration "
            f"({explanation['explained_risk']:.1%}); the risk served after calibration is {risk:.1%}."
        )
    return note
