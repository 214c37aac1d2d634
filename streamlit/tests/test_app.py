"""The page under Streamlit's AppTest against the real API: the form, the result, batch upload (good and
malformed files) and each error state (API unreachable, no champion, input refused)."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score
from streamlit.testing.v1 import AppTest
from uisupport import RecordingApi, eligible

from readmission import schema
from readmission.synthetic import synthetic_encounters
from readmission_ui.charts import BAND_COLOURS, BAND_TEXT_COLOURS, LOWERS_COLOUR, RAISES_COLOUR
from readmission_ui.labels import factor_label

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SECOND_EXAMPLE = list(schema.EXAMPLE_ENCOUNTERS)[1]
# Hang guards, not speed limits: a busy machine can take many seconds for a script run or an API answer.
PATIENCE_SECONDS = 300


def _page(monkeypatch: pytest.MonkeyPatch, api: str) -> AppTest:
    monkeypatch.setenv("API_URL", api)
    monkeypatch.setenv("API_TIMEOUT_SECONDS", str(PATIENCE_SECONDS))  # the page's own 15 s is for people
    at = AppTest.from_file(APP, default_timeout=PATIENCE_SECONDS)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(elements: object) -> str:
    return "\n".join(str(e.value) for e in elements)  # type: ignore[attr-defined]


def _table_with(at: AppTest, column: str) -> pd.DataFrame:
    """The one table on the page that has ``column``."""
    (table,) = [d.value for d in at.dataframe if column in d.value.columns]
    return table


def _api_predict(api: str, encounter: dict[str, object], query: str = "") -> dict[str, Any]:
    request = urllib.request.Request(
        f"{api}/predict{query}", data=json.dumps(encounter).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=PATIENCE_SECONDS) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_an_example_patient_gets_the_apis_risk_band_and_model(monkeypatch: pytest.MonkeyPatch, api_url: str) -> None:
    at = _page(monkeypatch, api_url)
    assert "Ready: diabetes-readmission v1 (@champion)" in _texts(at.sidebar.success)
    # The form is generated from the contract: one input per model input, the contract's allowed values.
    race = at.selectbox(key="f_race")
    assert race.options == ["Unknown", "African American", "Asian", "Caucasian", "Hispanic", "Other"]
    assert at.number_input(key="f_time_in_hospital").max == schema.column("time_in_hospital").maximum
    at.button(key=f"example {SECOND_EXAMPLE}").click().run()
    assert at.selectbox(key="f_race").value == schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE]["race"]
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and not at.error
    expected = _api_predict(api_url, schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["30-day readmission risk"] == f"{expected['risk_30_days']:.1%}"
    band = str(expected["risk_band"])
    assert metrics["Risk band"] == f":{BAND_TEXT_COLOURS[band]}[{band.upper()}]"  # Markdown: in the band's colour
    assert "model **diabetes-readmission v1** (alias `champion`)" in _texts(at.caption)


def _typed(body: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Each value with its JSON type: 1 and true compare equal in Python, not in the API's strict check."""
    return sorted((name, type(value).__name__, value) for name, value in body.items())


def _shown(at: AppTest, key: str) -> str:
    """The text a selectbox shows for its current value."""
    box = at.selectbox(key=key)
    assert box.index is not None
    return str(box.options[box.index])


def test_the_form_shows_readable_labels_and_yes_no_but_sends_the_contracts_codes(
    monkeypatch: pytest.MonkeyPatch, recording_api: RecordingApi
) -> None:
    """Before: the form showed the codes themselves (AfricanAmerican, InternalMedicine, MC) and number steppers
    for the 0/1 facts of the patient's previous encounter."""
    at = _page(monkeypatch, recording_api.url)
    at.button(key=f"example {SECOND_EXAMPLE}").click().run()
    assert _shown(at, "f_race") == "African American" and "AfricanAmerican" not in at.selectbox(key="f_race").options
    assert _shown(at, "f_payer_code") == "Medicaid (MD)"
    assert _shown(at, "f_A1Cresult") == "Over 8%" and _shown(at, "f_insulin") == "Increased"
    flag = at.radio(key="f_previous_readmission")
    assert flag.label == "The patient's previous encounter was followed by any readmission"
    assert (flag.options, flag.value) == (["No", "Yes"], 1)
    assert not {"f_previous_readmission", "f_previous_early_readmission"} & {n.key for n in at.number_input}
    at.selectbox(key="f_payer_code").set_value("MC")  # inside the form: applied with the submit
    at.selectbox(key="f_medical_specialty").set_value("InternalMedicine")
    at.radio(key="f_previous_early_readmission").set_value(0)  # "No"
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and not at.error
    assert _shown(at, "f_payer_code") == "Medicare (MC)"
    assert _shown(at, "f_medical_specialty") == "Internal Medicine"
    sent = [body for path, body in recording_api.posted if path == "/predict?explain=true&explain_top=8"]
    expected = {
        **schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE],
        "payer_code": "MC",
        "medical_specialty": "InternalMedicine",
        "previous_early_readmission": 0,
    }
    assert len(sent) == 1 and _typed(sent[0]) == _typed(expected)  # the codes, and No/Yes as the numbers 0/1


def _predict_tab_chart(at: AppTest, column: str, mark: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The layer drawing ``mark`` of the Predict tab's chart whose data has ``column``, as the browser gets it
    (Vega-Lite), and the rows of that layer."""
    for chart in at.tabs[0].get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        for layer in spec.get("layer", [spec]):
            if mark not in str(layer.get("mark")):
                continue
            name = layer.get("data", spec.get("data", {})).get("name")
            for dataset in chart.proto.datasets:
                rows = pa.ipc.open_stream(dataset.data.data).read_pandas()
                if column in rows.columns and (name is None or dataset.name == name):
                    return layer, rows
    raise AssertionError(f"no {mark} chart of {column!r} on the Predict tab")


def _probability_chart(at: AppTest) -> tuple[dict[str, Any], pd.DataFrame]:
    """The bar layer of the Predict tab's outcome chart, and the rows it draws."""
    return _predict_tab_chart(at, "outcome", "bar")


def test_the_chart_orders_outcomes_clinically_on_a_0_to_1_axis_with_the_band_coloured(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    """Before: bars in alphabetical order, "probability" as the title of the outcome axis, the value axis
    cut at the largest bar (0-0.48) and every bar one colour whatever the band."""
    at = _page(monkeypatch, api_url)
    at.button(key=f"example {SECOND_EXAMPLE}").click().run()
    at.get("form_submit_button")[0].click().run()
    expected = _api_predict(api_url, schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE])
    bars, rows = _probability_chart(at)
    x, y, colour = bars["encoding"]["x"], bars["encoding"]["y"], bars["encoding"].get("color", {})
    outcomes = ["No readmission", "After 30 days", "Within 30 days"]
    assert (y["field"], y.get("sort"), y["title"]) == ("outcome", outcomes, "Readmission")
    assert (x["field"], x["title"], x["scale"].get("domain")) == ("probability", "Probability", [0, 1])
    probabilities = expected["probabilities"]
    assert isinstance(probabilities, dict)
    assert list(rows["outcome"]) == outcomes
    assert list(rows["probability"]) == pytest.approx([probabilities[c] for c in ("NO", ">30", "<30")])
    shade = dict(zip(colour["scale"]["domain"], colour["scale"]["range"], strict=True))
    drawn = [shade[key] for key in rows[colour["field"]]]
    band = str(expected["risk_band"])
    assert drawn[2] == BAND_COLOURS[band] and f"{band} risk" in rows[colour["field"]].iloc[2]
    assert drawn[0] == drawn[1] and drawn[0] not in BAND_COLOURS.values()  # the other outcomes: neutral
    assert {m.label: m.value for m in at.metric}["Risk band"] == f":{BAND_TEXT_COLOURS[band]}[{band.upper()}]"


def test_the_answer_shows_why_against_the_base_rate_and_the_bands(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    at = _page(monkeypatch, api_url)
    at.button(key=f"example {SECOND_EXAMPLE}").click().run()
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and not at.error
    expected = _api_predict(api_url, schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE], "?explain=true&explain_top=8")
    explanation = expected["explanation"]
    # The factors: the API's top contributions, largest first, in words with the value sent, red raising the risk.
    bars, factors = _predict_tab_chart(at, "factor", "bar")
    listed = explanation["contributions"]
    assert list(factors["contribution"]) == pytest.approx([c["contribution"] for c in listed], abs=1e-12)
    assert list(factors["factor"]) == [factor_label(c["feature"], c["description"], c["value"]) for c in listed]
    assert "Inpatient visits in the year before: 4" in list(factors["factor"])  # the example's 4 inpatient visits
    scale = bars["encoding"]["color"]["scale"]
    shade = dict(zip(scale["domain"], scale["range"], strict=True))
    assert [shade[e] for e in factors["effect"]] == [
        RAISES_COLOUR if c["contribution"] > 0 else LOWERS_COLOUR for c in listed
    ]
    assert bars["encoding"]["x"]["title"] == "Contribution (log-odds of the 30-day risk)"
    # The risk against the population: the band strip at the API's cut points, this risk and the base rate.
    _, strip = _predict_tab_chart(at, "band", "bar")
    assert list(strip["start"])[:3] == [0.0, 0.15, 0.30] and list(strip["band"]) == ["low", "medium", "high"]
    _, marks = _predict_tab_chart(at, "what", "tick")
    base_rate = _model_info(api_url)["metrics"]["validation_prevalence_30"]
    assert dict(zip(marks["what"], marks["risk"], strict=True)) == pytest.approx(
        {"this encounter": expected["risk_30_days"], "base rate": base_rate}
    )
    captions = _texts(at.caption)
    assert f"against a base rate of {base_rate:.1%}" in captions
    assert "Bands: low below 15%, medium 15% to 30%, high from 30%" in captions
    assert f"The {explanation['other_features']['count']} features not shown add" in captions
    assert f"this encounter's {explanation['value']:+.3f} ({explanation['explained_risk']:.1%})" in captions
    if explanation["calibrated"]:  # the test registry's champion is recalibrated: both risks, told apart
        assert f"the risk served after calibration is {expected['risk_30_days']:.1%}" in captions


def test_a_model_without_explanations_still_answers_and_says_why(
    monkeypatch: pytest.MonkeyPatch, unexplained_api_url: str
) -> None:
    at = _page(monkeypatch, unexplained_api_url)
    at.button(key=f"example {SECOND_EXAMPLE}").click().run()
    at.get("form_submit_button")[0].click().run()
    assert not at.exception and not at.error
    expected = _api_predict(unexplained_api_url, schema.EXAMPLE_ENCOUNTERS[SECOND_EXAMPLE])
    assert {m.label: m.value for m in at.metric}["30-day readmission risk"] == f"{expected['risk_30_days']:.1%}"
    note = _texts(at.info)
    assert "No explanation this time:" in note and "is served without explanations" in note
    assert "LogisticRegression" in note and "train and promote a new version" in note
    # Batch scoring offers no explanations it cannot give, and says why.
    frame = eligible(synthetic_encounters(5, seed=6))
    _upload(at, "ward.csv", frame.to_csv(index=False).encode())
    box = at.checkbox(key="explain_batch")
    assert box.disabled and "has no explanations" in str(box.help)


def _model_info(api: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/model", timeout=PATIENCE_SECONDS) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def test_a_field_the_api_refuses_is_named_with_the_reason(monkeypatch: pytest.MonkeyPatch, api_url: str) -> None:
    at = _page(monkeypatch, api_url)
    at.text_input(key="f_diag_1").input("not-a-code")  # inside the form: sent with the submit
    at.get("form_submit_button")[0].click().run()
    assert "The API refused the input" in _texts(at.error)
    refused = at.dataframe[0].value
    assert list(refused["field"]) == ["Primary diagnosis (ICD-9) (diag_1)"]  # was: the API name alone
    # What is allowed is said once, in the message (was: the message and an `allowed` column both).
    assert list(refused.columns) == ["field", "problem"] and "ICD-9 code like" in refused["problem"].iloc[0]
    assert not [m for m in at.metric if m.label == "30-day readmission risk"]  # no stale result beside it


def _upload(at: AppTest, name: str, content: bytes) -> AppTest:
    at.tabs[1]  # the batch tab exists
    at.get("file_uploader")[0].set_value((name, content, "text/csv"))
    return at.run()


def test_a_good_file_is_scored_in_chunks_with_a_summary_and_a_download(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    monkeypatch.setenv("BATCH_CHUNK_ROWS", "40")  # 3 calls for 100 rows
    frame = eligible(synthetic_encounters(100, seed=3))
    at = _page(monkeypatch, api_url)
    _upload(at, "ward.csv", frame.to_csv(index=False).encode())
    assert "ward.csv: 100 valid encounters." in _texts(at.success)
    at.button(key="score").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Encounters scored"] == "100"
    results = _table_with(at, "risk_30_days")
    assert list(results["encounter_id"]) == list(frame["encounter_id"])  # in file order, beside its ids
    assert results["risk_30_days"].between(0, 1).all() and set(results["model_version"]) == {"1"}
    first = _api_predict(api_url, schema.raw_to_encounter(frame.iloc[0].to_dict()))
    assert results["risk_30_days"].iloc[0] == pytest.approx(first["risk_30_days"])
    assert "Answered by diabetes-readmission v1 (@champion)." in _texts(at.caption)
    assert at.get("download_button")  # the results as CSV
    assert not any(c.startswith("factor_") for c in results.columns)


def test_explained_batch_scoring_adds_the_top_three_factors_to_the_download(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    monkeypatch.setenv("BATCH_CHUNK_ROWS", "25")
    frame = eligible(synthetic_encounters(60, seed=4))
    at = _page(monkeypatch, api_url)
    _upload(at, "ward.csv", frame.to_csv(index=False).encode())
    at.button(key="score").click().run()
    assert "factor_1_feature" not in _table_with(at, "risk_30_days").columns
    at.checkbox(key="explain_batch").check().run()  # asked after scoring: scored again, with the factors
    at.button(key="score").click().run()
    assert not at.exception and not at.error
    results = _table_with(at, "risk_30_days")
    factors = [f"factor_{k}_{part}" for k in (1, 2, 3) for part in ("feature", "value", "contribution")]
    assert set(factors) <= set(results.columns) and "factor_4_feature" not in results.columns
    for i in (0, 59):
        encounter = schema.raw_to_encounter(frame.iloc[i].to_dict())
        listed = _api_predict(api_url, encounter, "?explain=true&explain_top=3")["explanation"]["contributions"]
        assert [results[f"factor_{k}_feature"].iloc[i] for k in (1, 2, 3)] == [c["feature"] for c in listed]
        got = [results[f"factor_{k}_contribution"].iloc[i] for k in (1, 2, 3)]
        assert got == pytest.approx([c["contribution"] for c in listed], abs=1e-12)
    assert set(results["explanation_scale"]) == {"log-odds"}


def test_a_file_with_outcomes_keeps_them_and_compares_them_with_the_predicted_risk(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    """Before: the tab said `readmitted` was kept beside the results, but only the two identifiers were, and
    nothing compared the predictions with the outcomes."""
    frame = eligible(synthetic_encounters(120, seed=11))
    assert set(frame["readmitted"]) == {"NO", ">30", "<30"}
    at = _page(monkeypatch, api_url)
    _upload(at, "outcomes.csv", frame.to_csv(index=False).encode())
    at.button(key="score").click().run()
    assert not at.exception and not at.error
    results = _table_with(at, "risk_30_days")
    assert list(results.columns[:3]) == ["encounter_id", "patient_nbr", "readmitted"]
    assert list(results["readmitted"]) == list(frame["readmitted"])
    download = pd.read_csv(io.BytesIO(at.session_state["scored"].csv), dtype=str, keep_default_na=False)
    assert list(download["readmitted"]) == list(frame["readmitted"])  # in the CSV offered for download too
    by_outcome = _table_with(at, "recorded outcome")
    assert list(by_outcome["recorded outcome"]) == ["No readmission", "After 30 days", "Within 30 days"]
    risk = results.groupby("readmitted")["risk_30_days"]
    assert list(by_outcome["encounters"]) == [risk.size()[c] for c in ("NO", ">30", "<30")]
    assert list(by_outcome["mean predicted 30-day risk"]) == pytest.approx(
        [risk.mean()[c] for c in ("NO", ">30", "<30")]
    )
    early = results["readmitted"].eq("<30")
    auc = roc_auc_score(early, results["risk_30_days"])
    assert {m.label: m.value for m in at.metric}["ROC-AUC of the 30-day risk"] == f"{auc:.3f}"
    assert f"Over 120 encounters: {early.sum()} readmitted within 30 days, {(~early).sum()} not." in _texts(at.caption)

    one_kind = frame[frame["readmitted"] != "<30"]
    _upload(at, "no-early.csv", one_kind.to_csv(index=False).encode())
    at.button(key="score").click().run()
    assert "ROC-AUC of the 30-day risk" not in {m.label for m in at.metric}
    assert (
        f"No ROC-AUC: it needs encounters of both kinds, and this file has 0 readmitted within 30 days, {len(one_kind)} not."
        in _texts(at.info)
    )


def _predictions_served(api: str) -> float:
    """inference_predictions_total of the API, summed over classes."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=PATIENCE_SECONDS) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("inference_predictions_total{"))


def test_scored_results_survive_any_click_and_are_never_scored_twice(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    """Before: any click after scoring (Download too) wiped the results, and Score again logged every
    prediction a second time."""
    frame = eligible(synthetic_encounters(30, seed=8))
    at = _page(monkeypatch, api_url)
    _upload(at, "ward.csv", frame.to_csv(index=False).encode())
    at.button(key="score").click().run()
    served = _predictions_served(api_url)
    for _ in range(2):  # unrelated clicks: each is a rerun of the whole script
        at.button(key=f"example {SECOND_EXAMPLE}").click().run()
        assert not at.exception
        assert {m.label: m.value for m in at.metric}["Encounters scored"] == "30"
        assert at.get("download_button")
        assert not [b for b in at.button if b.key == "score"]  # nothing offers to send the same file again
    assert _predictions_served(api_url) == served
    _upload(at, "other.csv", eligible(synthetic_encounters(5, seed=9)).to_csv(index=False).encode())
    assert [b for b in at.button if b.key == "score"]  # another file: its own Score button
    assert not [m for m in at.metric if m.label == "Encounters scored"]


def test_a_malformed_file_shows_each_bad_row_and_sends_nothing(monkeypatch: pytest.MonkeyPatch, api_url: str) -> None:
    frame = eligible(synthetic_encounters(30, seed=4))
    frame.loc[4, "age"] = "[100-110)"
    frame.loc[9, "num_medications"] = "lots"
    at = _page(monkeypatch, api_url)
    _upload(at, "bad.csv", frame.to_csv(index=False).encode())
    assert "bad.csv: 2 problem(s) in 2 of 30 rows; nothing was sent." in _texts(at.error)
    problems = at.dataframe[0].value
    assert list(problems["line"]) == [6, 11]  # file lines: header is line 1
    assert "age: unknown level '[100-110)'" in problems["problem"].iloc[0]
    assert not [b for b in at.button if b.key == "score"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"race,gender\nCaucasian,Female\n", "lacks 45 column(s) of the raw data format: age, weight"),
        (b"", "the file is empty. Save it as CSV"),
        (b"race|gender\nCaucasian|Female\n", "the file is separated by '|'"),
    ],
)
def test_a_file_that_is_not_encounters_is_refused_as_a_whole(
    monkeypatch: pytest.MonkeyPatch, api_url: str, content: bytes, message: str
) -> None:
    at = _page(monkeypatch, api_url)
    _upload(at, "x.csv", content)
    assert message in _texts(at.error)


def _api_get(api: str, path: str) -> Any:
    with urllib.request.urlopen(f"{api}{path}", timeout=PATIENCE_SECONDS) as response:
        return json.loads(response.read())


def _model_tab(at: AppTest) -> Any:
    return next(tab for tab in at.tabs if tab.label == "Model")


def test_the_model_page_names_and_explains_every_metric_validation_beside_test(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    """Before: raw keys (`brier_skill_30`), a `value` column that was mostly None, truncated headline values."""
    at = _page(monkeypatch, api_url)
    tab = _model_tab(at)
    info = _api_get(api_url, "/model")
    metrics = {m.label: m.value for m in tab.metric}
    assert metrics["Version"] == "v1" and metrics["Alias"] == "champion"
    assert metrics["ROC-AUC (test)"] == f"{info['metrics']['test_roc_auc_30']:.4f}"
    assert all(len(value) <= 10 for value in metrics.values())  # short enough for a column: never cut
    assert "diabetes-readmission v1" in _texts(tab.caption)
    split = next(t.value for t in tab.table if "Validation" in t.value.columns)
    assert list(split.columns) == ["Metric", "Validation", "Test", "Meaning"]
    rows = split.set_index("Metric")
    for key, name in (("roc_auc_30", "ROC-AUC (30-day)"), ("brier_skill_30", "Brier skill (30-day)")):
        assert rows.loc[name, "Validation"] == f"{info['metrics'][f'validation_{key}']:.4f}"
        assert rows.loc[name, "Test"] == f"{info['metrics'][f'test_{key}']:.4f}"
    names = set(rows.index)
    assert {"Average precision (30-day)", "Calibration slope (30-day)", "Calibration intercept (30-day)"} <= names
    assert "Prevalence (30-day)" in names and not any("_" in name for name in names)  # no raw key
    assert split.notna().all().all() and (split != "").all().all() and "None" not in split.to_string()
    figures = next(t.value for t in tab.table if "Figure" in t.value.columns)
    threshold = figures.set_index("Figure").loc["Decision threshold (30-day)", "Value"]
    assert threshold == f"{info['metrics']['chosen_threshold_30']:.1%}"


def test_the_model_page_shows_the_plots_importance_and_version_history(
    monkeypatch: pytest.MonkeyPatch, api_url: str
) -> None:
    at = _page(monkeypatch, api_url)
    tab = _model_tab(at)
    assert not tab.warning, _texts(tab.warning)
    captions = [caption for image in tab.image for caption in image.captions]
    assert captions == [
        "ROC curve (test split)",
        "Precision-recall curve (test split)",
        "Reliability: predicted against observed 30-day rate (test split)",
    ]
    assert all(url.endswith(".png") for image in tab.image for url in image.value)
    (chart,) = tab.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    drawn = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_pandas()
    importance = _api_get(api_url, "/model/importance")["features"]
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["y"]["field"] == "feature"
    assert drawn["name"].tolist() == [f["feature"] for f in importance[:20]]  # the top 20, largest first
    assert drawn["importance"].tolist() == pytest.approx([f["importance"] for f in importance[:20]])
    history = next(t.value for t in tab.table if "Decision" in t.value.columns)
    assert history[["Version", "Aliases", "Decision", "Reason"]].to_dict("records") == [
        {"Version": "v1", "Aliases": "challenger, champion", "Decision": "promoted", "Reason": "no champion yet"}
    ]
    assert history.loc[0, "Note"] == "served here"


def test_the_model_page_keeps_its_metrics_when_mlflow_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API serves the model, but MLflow is down: each MLflow-fed section says so; the metrics still show."""
    from livesupport import json_stand_in

    down = {"error": "registry_unavailable", "message": "MLflow could not list the versions", "request_id": "r1"}
    model = {
        "name": "diabetes-readmission", "version": "4", "alias": "champion", "registry_status": "ok",
        "registry_message": None, "run_id": "a" * 32, "loaded_at": "2025-01-01T00:00:00Z",
        "prediction_path": "compiled", "metrics": {"test_roc_auc_30": 0.68, "validation_roc_auc_30": 0.69},
    }  # fmt: skip
    ready = {"status": "ready", "model": {"name": "diabetes-readmission", "version": "4", "alias": "champion"}}
    answers = {"/model": (200, model), "/health/ready": (200, ready)}
    with json_stand_in(lambda path: answers.get(path.split("?")[0], (502, down))) as url:
        at = _page(monkeypatch, url)
    tab = _model_tab(at)
    warnings = _texts(tab.warning)
    for section in ("plots", "feature importance", "version history"):
        assert f"The {section} cannot be shown now" in warnings
    assert "HTTP 502" in warnings and "MLflow could not" in warnings
    assert next(t.value for t in tab.table if "Validation" in t.value.columns).shape[0] == 1


def test_no_champion_yet_tells_the_user_to_run_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, not_ready_api_url: str
) -> None:
    at = _page(monkeypatch, not_ready_api_url)
    assert "No model is served yet" in _texts(at.sidebar.warning)
    at.get("form_submit_button")[0].click().run()
    warnings = _texts(at.warning)
    assert "1-diabetes-training-pipeline" in warnings and "make run" in warnings


def test_an_unreachable_api_is_named_with_its_url(monkeypatch: pytest.MonkeyPatch, closed_url: str) -> None:
    at = _page(monkeypatch, closed_url)
    assert f"The API cannot be reached** at `{closed_url}`" in _texts(at.sidebar.error)
    at.get("form_submit_button")[0].click().run()
    assert "cannot be reached" in _texts(at.error)


def test_a_bad_api_url_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(monkeypatch, "inference-api:8000")
    assert "API_URL must start with http:// or https://" in _texts(at.error)


def test_a_champion_that_is_loading_is_not_called_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: while the API loaded the champion `make run` had just trained, the page said "No model is
    served yet ... Run the training pipeline"."""
    from livesupport import json_stand_in

    loading = {"status": "not_ready", "reason": "loading version 1 of diabetes-readmission"}
    with json_stand_in(lambda _: (503, loading)) as url:
        at = _page(monkeypatch, url)
    assert "The model is loading" in _texts(at.sidebar.info)
    assert "No model is served yet" not in _texts(at.sidebar.warning)
