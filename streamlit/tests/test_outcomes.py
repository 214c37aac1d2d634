"""A scored file's predicted risks against the outcomes it records: the mean 30-day risk per outcome and the
ROC-AUC of the 30-day risk (the page computes it without scikit-learn; checked against scikit-learn here)."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from readmission_ui.batch import compare_with_outcomes, roc_auc

RISKS = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]) | st.floats(0, 1)  # ties on purpose


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(RISKS, st.booleans()), min_size=2, max_size=60))
def test_roc_auc_is_scikit_learns(rows: list[tuple[float, bool]]) -> None:
    scores = pd.Series([r for r, _ in rows])
    positive = pd.Series([p for _, p in rows])
    if positive.all() or not positive.any():
        with pytest.raises(ValueError, match="needs both positive and negative rows"):
            roc_auc(scores, positive)
    else:
        assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))


def _results(outcomes: list[str], risks: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"encounter_id": range(1, len(risks) + 1), "readmitted": outcomes, "risk_30_days": risks})


def test_the_mean_risk_per_recorded_outcome_in_clinical_order_with_the_auc() -> None:
    results = _results(["<30", "NO", ">30", "NO", "<30"], [0.6, 0.1, 0.3, 0.2, 0.4])
    comparison = compare_with_outcomes(results)
    assert comparison is not None
    assert comparison.by_outcome.to_dict(orient="list") == {
        "recorded outcome": ["No readmission", "After 30 days", "Within 30 days"],
        "encounters": [2, 1, 2],
        "mean predicted 30-day risk": pytest.approx([0.15, 0.3, 0.5]),
    }
    assert (comparison.early, comparison.other, comparison.roc_auc) == (2, 3, 1.0)


def test_one_kind_of_outcome_has_no_auc_and_no_outcome_no_comparison() -> None:
    comparison = compare_with_outcomes(_results(["NO", ">30", "NO"], [0.1, 0.3, 0.2]))
    assert comparison is not None and comparison.roc_auc is None
    assert (comparison.early, comparison.other) == (0, 3)
    assert list(comparison.by_outcome["recorded outcome"]) == ["No readmission", "After 30 days"]
    assert compare_with_outcomes(_results(["NO"], [0.1]).drop(columns="readmitted")) is None
