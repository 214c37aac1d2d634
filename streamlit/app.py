"""The page clinicians and analysts use: predict one encounter, score a file, see the model being served.

    streamlit run streamlit/app.py        (API_URL: where the inference API is; see streamlit/.env.example)

Every list of allowed values and every range comes from the shared feature contract (readmission.schema),
the same declarations the API validates against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import streamlit as st

from readmission import schema
from readmission_ui import model_view
from readmission_ui.batch import (
    EXPLAINED_FACTORS,
    BatchFileError,
    CheckedFile,
    OutcomeComparison,
    check_file,
    compare_with_outcomes,
    score,
    summary,
)
from readmission_ui.charts import BAND_TEXT_COLOURS, explanation_note, factor_chart, probability_chart, risk_scale_chart
from readmission_ui.client import ApiClient, ApiFailed, ApiNotReady, ApiProblem, ApiRejected, ApiUnreachable
from readmission_ui.labels import OUTCOME_LABELS, UNKNOWN, YES_NO, field_label, flag_label, is_flag, level_label
from readmission_ui.settings import UiSettings

SECTIONS = {
    schema.Section.DEMOGRAPHICS: "Demographics",
    schema.Section.ADMISSION: "Admission",
    schema.Section.HISTORY: "History",
    schema.Section.DIAGNOSES: "Diagnoses",
    schema.Section.MEDICATIONS: "Medications",
}
FIRST_EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS))


@st.cache_resource
def _client(url: str, timeout: float) -> ApiClient:
    return ApiClient(url, timeout)


def _show_problem(problem: ApiProblem, settings: UiSettings) -> None:
    """One clear message per kind of failure."""
    if isinstance(problem, ApiUnreachable):
        st.error(
            f"**The API cannot be reached** at `{settings.api_url}`. Check that it runs and that API_URL points "
            f"at it.\n\n{problem}",
            icon="🔌",
        )
    elif isinstance(problem, ApiNotReady) and any(w in str(problem) for w in ("loading version", "starting:")):
        what = "The model is loading" if "loading version" in str(problem) else "The service is starting"
        st.info(f"**{what}.** Try again in a few seconds.\n\nThe API says: {problem}", icon="⏳")
    elif isinstance(problem, ApiNotReady):
        st.warning(
            "**No model is served yet.** The API runs but has no `champion` to answer with. Run the training "
            "pipeline (Airflow DAG `1-diabetes-training-pipeline`, or `make run` on a laptop); the API picks "
            f"the champion up by itself.\n\nThe API says: {problem}",
            icon="⏳",
        )
    elif isinstance(problem, ApiRejected):
        st.error(f"**The API refused the input:** {problem}", icon="✋")
        rows = [  # the form's label beside the API's name; the message says what is allowed
            {"field": _form_name(e.field), "problem": e.message} for e in problem.errors
        ]
        if rows:
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    elif isinstance(problem, ApiFailed):
        st.error(f"**The API failed.** {problem}", icon="🛑")


def _form_name(field: str) -> str:
    """The label the form shows for an API field name, with the name (``Primary diagnosis (ICD-9) (diag_1)``)."""
    known = {c.name: c for c in schema.COLUMNS} | {h.name: h for h in schema.HISTORY_FEATURES}
    column = known.get(field.split(".")[-1])
    return f"{field_label(column)} ({field})" if column is not None else field


def _widget(col: schema.Column | schema.HistoryFeature, key: str) -> None:
    """The input of one field, with the contract's allowed values or range: No/Yes for a 0/1 field, readable
    labels for a categorical one (the value kept, and sent, is the contract's 0/1, level or code)."""
    if is_flag(col):
        st.radio(flag_label(col), (0, 1), format_func=YES_NO.__getitem__, horizontal=True, key=key)
    elif isinstance(col, schema.HistoryFeature):
        st.number_input(field_label(col), min_value=0, max_value=col.maximum, step=1, key=key)
    elif col.kind in (schema.Kind.CATEGORY, schema.Kind.CODED):
        options: list[Any] = [int(v) for v in col.levels] if col.kind is schema.Kind.CODED else list(col.levels)
        if col.name == schema.ELIGIBILITY_FIELD:  # death or hospice: outside the model's population
            options = [v for v in options if schema.eligibility_problem(v) is None]
        if col.may_be_missing:
            options = [UNKNOWN, *options]
        st.selectbox(field_label(col), options, format_func=partial(level_label, col), key=key)
    elif col.kind is schema.Kind.INTEGER:
        st.number_input(
            field_label(col),
            min_value=col.minimum,
            max_value=col.maximum,
            step=1,
            key=key,
            help=f"{col.minimum} to {col.maximum}",
        )
    else:  # diagnosis
        st.text_input(field_label(col), key=key, help="ICD-9 code such as 428, 250.83, V57 or E878; empty if unknown")


def _load_example(name: str) -> None:
    """Fill the form with an example patient (None: the field's "unknown" choice)."""
    for field_name, value in schema.EXAMPLE_ENCOUNTERS[name].items():
        unknown = "" if field_name.startswith("diag_") else UNKNOWN
        st.session_state[f"f_{field_name}"] = unknown if value is None else value
    st.session_state.pop("result", None)


def _encounter_from_form() -> dict[str, Any]:
    """The request body: the form's values as the contract spells them (levels, codes and integers)."""
    values: dict[str, Any] = {}
    for name in schema.MODEL_INPUT_NAMES:
        value = st.session_state[f"f_{name}"]
        values[name] = None if value in (UNKNOWN, "") else value.strip() if isinstance(value, str) else int(value)
    return values


def _show_prediction(result: dict[str, Any], context: dict[str, Any]) -> None:
    """The API's answer: the 30-day risk, its band in the band's colour, the most likely outcome, the chart."""
    risk, band, model = result["risk_30_days"], result["risk_band"], result["model"]
    left, middle, right = st.columns(3)
    left.metric("30-day readmission risk", f"{risk:.1%}", help="P(readmitted within 30 days)")
    middle.metric(
        "Risk band",
        f":{BAND_TEXT_COLOURS[band]}[{band.upper()}]",
        help="From the 30-day risk, with the cut points the API is configured with (RISK_BAND_THRESHOLDS)",
    )
    right.metric("Most likely outcome", OUTCOME_LABELS[result["predicted_class"]])
    st.altair_chart(probability_chart(result["probabilities"], band), width="stretch")
    _show_against_population(risk, context)
    _show_factors(result)
    st.caption(
        f"Answered by model **{model['name']} v{model['version']}** (alias `{model['alias']}`), "
        f"request id `{result['request_id']}`."
    )


def _show_against_population(risk: float, context: dict[str, Any]) -> None:
    """The risk on the band strip, beside the population's base rate (the validation split's 30-day rate)."""
    base_rate, thresholds = context.get("base_rate"), context.get("thresholds")
    if not thresholds:
        return
    st.subheader("Against the population")
    low, high = thresholds
    words = f"{risk:.1%} for this encounter"
    if base_rate is not None:
        words += f", against a base rate of {base_rate:.1%} (the 30-day readmission rate of the validation patients)"
    st.caption(f"{words}. Bands: low below {low:.0%}, medium {low:.0%} to {high:.0%}, high from {high:.0%}.")
    st.altair_chart(risk_scale_chart(risk, base_rate, thresholds), width="stretch")


def _show_factors(result: dict[str, Any]) -> None:
    """The top contributions to this risk as a chart, and how to read them."""
    st.subheader("Why this risk")
    explanation = result.get("explanation")
    if explanation is None:
        st.info(result.get("explanation_note") or "No explanation was returned for this answer.")
        return
    st.altair_chart(factor_chart(explanation), width="stretch")
    st.caption(explanation_note(explanation, result["risk_30_days"]))


def predict_page(client: ApiClient, settings: UiSettings) -> None:
    st.write("Fill in one encounter, or start from an example patient:")
    for column, name in zip(st.columns(len(schema.EXAMPLE_ENCOUNTERS)), schema.EXAMPLE_ENCOUNTERS, strict=True):
        column.button(name, key=f"example {name}", on_click=_load_example, args=(name,), width="stretch")
    with st.form("encounter"):
        for section, title in SECTIONS.items():
            fields: list[schema.Column | schema.HistoryFeature] = [
                c for c in schema.FEATURE_COLUMNS if c.section is section
            ]
            if section is schema.Section.HISTORY:
                fields += list(schema.HISTORY_FEATURES)
            with st.expander(title, expanded=section is not schema.Section.MEDICATIONS):
                columns = st.columns(4 if section is schema.Section.MEDICATIONS else 3)
                for i, col in enumerate(fields):
                    with columns[i % len(columns)]:
                        _widget(col, f"f_{col.name}")
        submitted = st.form_submit_button("Predict", type="primary")
    if submitted:
        try:
            st.session_state["result"] = _predict_explained(client, _encounter_from_form())
        except ApiProblem as problem:
            st.session_state.pop("result", None)
            _show_problem(problem, settings)
    if "result" in st.session_state:
        _show_prediction(st.session_state["result"], _population(client))


FACTORS_SHOWN = 8  # contributions the Predict tab charts


def _predict_explained(client: ApiClient, encounter: dict[str, Any]) -> dict[str, Any]:
    """The answer with its explanation; a plain answer, saying why, when the served model has none (409)."""
    try:
        return client.predict(encounter, explain_top=FACTORS_SHOWN)
    except ApiFailed as problem:  # 409: a model without explanations; 503: explanations busy; 5xx: a failure
        return {**client.predict(encounter), "explanation_note": f"No explanation this time: {problem.message}"}


def _explanations_unavailable(client: ApiClient) -> str | None:
    """Why the served model has no explanations (``GET /model``), or None when it has them (or cannot say)."""
    try:
        info = client.model()
    except ApiProblem:
        return None
    if info.get("explanations", True):
        return None
    return f"The served model has no explanations: {info.get('explain_problem')}"


def _population(client: ApiClient) -> dict[str, Any]:
    """The base rate and the band cut points of the served model (``GET /model``); empty when unavailable."""
    try:
        info = client.model()
    except ApiProblem:
        return {}
    return {
        "base_rate": info.get("metrics", {}).get("validation_prevalence_30"),
        "thresholds": info.get("risk_band_thresholds"),
    }


@st.cache_resource(max_entries=4, ttl=3600, show_spinner="Checking every row…")
def _checked(digest: str, _content: bytes, max_rows: int) -> CheckedFile | str:
    """The checked file, once per content (``digest``: its SHA-256, the cache key; Streamlit does not hash
    ``_content`` again); the error text when it is unusable. A rerun (any click) reuses it: re-checking a
    100,000-row file on every click took most of a minute."""
    try:
        return check_file(_content, max_rows)
    except BatchFileError as exc:
        return str(exc)


def batch_page(client: ApiClient, settings: UiSettings) -> None:
    st.write(
        "Upload a CSV in the raw data format (the columns of `diabetic_data.csv`; identifiers and `readmitted` "
        "are optional and kept beside the results; with `readmitted`, the predicted risks are compared with it). "
        "Every row is checked first; nothing is sent if any is invalid."
    )
    upload = st.file_uploader("Encounters (CSV)", type=["csv"], key="upload")
    if upload is None:
        return
    content = upload.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    checked = _checked(digest, content, settings.max_upload_rows)
    if isinstance(checked, str):
        st.error(f"**{upload.name} cannot be used:** {checked}", icon="📄")
        return
    if not checked.valid:
        _show_row_errors(upload.name, checked)
        return
    st.success(f"{upload.name}: {len(checked.encounters):,} valid encounters.")
    unavailable = _explanations_unavailable(client)
    explain = (
        st.checkbox(
            f"Explain each row: add its top {EXPLAINED_FACTORS} factors to the download",
            key="explain_batch",
            disabled=unavailable is not None,
            help=unavailable
            or "Exact contributions to the 30-day risk, as the Predict tab shows them; slower on large files. A "
            "file in the raw format has no history columns: each row is sent as a first visit (history features "
            "0), and its factors may cite those zeros.",
        )
        and unavailable is None
    )
    key = f"{digest}:{explain}"  # asking for explanations after scoring scores again, with them
    scored: ScoredFile | None = st.session_state.get("scored")
    if scored is None or scored.digest != key:
        if not st.button(f"Score {len(checked.encounters):,} encounters", type="primary", key="score"):
            return
        scored = _score(client, settings, checked, key, upload.name, explain)
        if scored is None:
            return
        st.session_state["scored"] = scored  # kept across reruns: a click never wipes it or scores again
    _show_scored(scored)


@dataclass(frozen=True)
class ScoredFile:
    """The results of one scored file, kept in the session: shown again on every rerun, never re-sent."""

    digest: str
    name: str
    results: pd.DataFrame
    versions: set[str]
    csv: bytes


def _show_row_errors(name: str, checked: CheckedFile) -> None:
    bad_lines = len({line for line, _ in checked.row_errors})
    st.error(
        f"**{name}: {len(checked.row_errors)} problem(s) in {bad_lines} of {len(checked.frame):,} rows; "
        "nothing was sent.** Fix these lines and upload again:",
        icon="📄",
    )
    errors = pd.DataFrame(checked.row_errors[:500], columns=["line", "problem"])
    st.dataframe(errors, hide_index=True, width="stretch")


def _score(
    client: ApiClient, settings: UiSettings, checked: CheckedFile, digest: str, name: str, explain: bool
) -> ScoredFile | None:
    bar = st.progress(0.0, text="scoring…")
    try:
        results, versions = score(
            client,
            checked,
            settings.batch_chunk_rows,
            lambda done, total: bar.progress(done / total, f"{done:,} of {total:,}"),
            explain=explain,
        )
    except ApiProblem as problem:
        _show_problem(problem, settings)
        return None
    return ScoredFile(digest, name, results, versions, results.to_csv(index=False).encode())


def _show_scored(scored: ScoredFile) -> None:
    facts = summary(scored.results)
    st.subheader("Summary")
    cols = st.columns(4)
    cols[0].metric("Encounters scored", f"{facts['rows']:,}")
    cols[1].metric("Mean 30-day risk", f"{facts['mean_risk_30_days']:.1%}")
    cols[2].metric("High risk", f"{facts['bands']['high']:,}")
    cols[3].metric("Medium risk", f"{facts['bands']['medium']:,}")
    st.caption(
        f"Answered by {', '.join(sorted(scored.versions))}. Scored once: uploading another file scores that one."
    )
    comparison = compare_with_outcomes(scored.results)
    if comparison is not None:
        _show_outcomes(comparison)
    st.dataframe(scored.results.head(1_000), hide_index=True, width="stretch")
    st.download_button(
        "Download the results (CSV)",
        scored.csv,
        file_name=f"{scored.name.removesuffix('.csv')}-scored.csv",
        mime="text/csv",
        key="download",
    )


def _show_outcomes(comparison: OutcomeComparison) -> None:
    """The predicted 30-day risks beside the outcomes the file records: the mean risk per outcome, and how well
    the risk separates the encounters readmitted within 30 days from the others (ROC-AUC)."""
    st.subheader("Predicted risk against the recorded outcome")
    left, right = st.columns([3, 2])
    left.dataframe(
        comparison.by_outcome,
        hide_index=True,
        column_config={"mean predicted 30-day risk": st.column_config.NumberColumn(format="percent")},
    )
    counts = f"{comparison.early:,} readmitted within 30 days, {comparison.other:,} not"
    if comparison.roc_auc is None:
        right.info(f"No ROC-AUC: it needs encounters of both kinds, and this file has {counts}.")
        return
    right.metric(
        "ROC-AUC of the 30-day risk",
        f"{comparison.roc_auc:.3f}",
        help="The chance that an encounter readmitted within 30 days got a higher risk than one that was not "
        "(0.5: no better than chance; 1: perfect).",
    )
    right.caption(f"Over {comparison.early + comparison.other:,} encounters: {counts}.")


def model_page(client: ApiClient, settings: UiSettings) -> None:
    """The served model: headline figures, its metrics named and explained (validation beside test), the
    evaluation plots and feature importance of its run, and the registry's version history. Each section that
    MLflow feeds says so on its own when it cannot be shown; the rest still is."""
    try:
        info = client.model()
    except ApiProblem as problem:
        _show_problem(problem, settings)
        return
    metrics: dict[str, float] = info["metrics"]
    cols = st.columns(4)
    cols[0].metric("Version", f"v{info['version']}")
    cols[1].metric("Alias", info["alias"] or "none", help=info.get("registry_message"))
    for col, (label, value, meaning) in zip(cols[2:], model_view.headline(metrics), strict=False):
        col.metric(label, value, help=meaning)
    loaded = pd.Timestamp(info["loaded_at"]).strftime("%Y-%m-%d %H:%M UTC")
    st.caption(
        f"**{info['name']} v{info['version']}**, MLflow run `{info['run_id']}`, loaded {loaded}; "
        f"prediction path: {info['prediction_path']}."
    )
    st.subheader("Metrics")
    st.caption("Validation: the split the model and its threshold were chosen on. Test: held out, scored once.")
    st.table(model_view.split_metrics_table(metrics), hide_index=True)
    figures = model_view.run_figures_table(metrics)
    if not figures.empty:
        st.table(figures, hide_index=True, width="content")
    _model_plots(client, settings, info["run_id"])
    _model_importance(client, settings, info["run_id"])
    _model_history(client, settings)


# A run's plots and importance never change: fetched once per run (the API keeps them too). The history moves
# with the registry: fetched again after a minute. ``_client`` is not hashed; ``url`` stands for it.
@st.cache_data(max_entries=32, show_spinner=False)
def _plots_of(_client: ApiClient, url: str, run_id: str) -> dict[str, bool]:
    listed: dict[str, bool] = model_view.same_run(_client.model_plots_answer(), run_id)["plots"]
    return listed


@st.cache_data(max_entries=32, show_spinner=False)
def _plot(_client: ApiClient, url: str, run_id: str, name: str) -> bytes:
    return _client.model_plot(name)


@st.cache_data(max_entries=8, show_spinner=False)
def _importance_of(_client: ApiClient, url: str, run_id: str) -> dict[str, Any]:
    return model_view.same_run(_client.model_importance(), run_id)


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def _history(_client: ApiClient, url: str) -> dict[str, Any]:
    return _client.model_versions(limit=model_view.HISTORY_ROWS)


def _model_plots(client: ApiClient, settings: UiSettings, run_id: str) -> None:
    st.subheader("Evaluation plots")
    try:
        logged = _plots_of(client, settings.api_url, run_id)
        images = {name: _plot(client, settings.api_url, run_id, name) for name in model_view.PLOTS if logged.get(name)}
    except ApiProblem as problem:
        st.warning(f"**The plots cannot be shown now.** {problem}", icon="📉")
        return
    for col, (name, caption) in zip(st.columns(len(model_view.PLOTS)), model_view.PLOTS.items(), strict=True):
        if name in images:
            col.image(images[name], caption=caption, width="stretch")
        else:
            col.info(f"{caption}: not logged by this version's run (trained before the plot was added).")


def _model_importance(client: ApiClient, settings: UiSettings, run_id: str) -> None:
    st.subheader("Global feature importance")
    try:
        importance = _importance_of(client, settings.api_url, run_id)
    except ApiProblem as problem:
        st.warning(f"**The feature importance cannot be shown now.** {problem}", icon="📊")
        return
    shown = min(model_view.TOP_FEATURES, len(importance["features"]))
    st.caption(f"The {shown} most important of {len(importance['features'])} inputs: {importance['measure']}.")
    st.altair_chart(model_view.importance_chart(importance["features"], importance["measure"]), width="stretch")


def _model_history(client: ApiClient, settings: UiSettings) -> None:
    st.subheader("Version history")
    try:
        history = _history(client, settings.api_url)
    except ApiProblem as problem:
        st.warning(f"**The version history cannot be shown now.** {problem}", icon="🗂️")
        return
    st.caption(
        f"Every version of {history['name']} the registry holds, newest first, with the promotion gate's decision: "
        f"a version becomes `champion` only if it beats the champion on the same test split."
        + (
            f" The latest {len(history['versions'])} of {history['total']}."
            if history["total"] > len(history["versions"])
            else ""
        )
    )
    st.table(model_view.history_table(history["versions"]), hide_index=True)


def main() -> None:
    st.set_page_config(page_title="Diabetes readmission risk", page_icon="🏥", layout="wide")
    try:
        settings = UiSettings()
    except ValueError as exc:
        st.error(f"**Invalid setting:** {exc}")
        st.stop()
    client = _client(settings.api_url, settings.api_timeout_seconds)
    if "f_race" not in st.session_state:
        _load_example(FIRST_EXAMPLE)
    st.title("Diabetes readmission risk")
    with st.sidebar:
        st.subheader("Service")
        try:
            ready = client.ready()
            st.success(f"Ready: {ready['model']['name']} v{ready['model']['version']} (@{ready['model']['alias']})")
        except ApiProblem as problem:
            _show_problem(problem, settings)
        st.caption(f"API: `{settings.api_url}`")
    predict_tab, batch_tab, model_tab = st.tabs(["Predict", "Batch scoring", "Model"])
    with predict_tab:
        predict_page(client, settings)
    with batch_tab:
        batch_page(client, settings)
    with model_tab:
        model_page(client, settings)


main()
