"""Baseline in the style of the original service: engine per request, pandas + pyfunc, `to_sql` per prediction.

Run: MODEL_URI=models:/diabetes-readmission@champion LOG_URL=mysql://... uvicorn naive_api:app (from bench/servers).
"""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI
from sqlalchemy import create_engine

from readmission.db import normalize_url

app = FastAPI()
model = mlflow.pyfunc.load_model(os.environ["MODEL_URI"])
LOG_URL = normalize_url(os.environ["LOG_URL"])


@app.post("/predict")
def predict(encounter: dict[str, Any]) -> dict[str, Any]:
    engine = create_engine(LOG_URL)  # the original opened a new engine on every request
    frame = pd.DataFrame([encounter])
    probabilities = model.predict(frame)
    row = frame.assign(prediction=str(probabilities.iloc[0].to_dict()) if hasattr(probabilities, "iloc") else "")
    row.to_sql("naive_predictions", engine, if_exists="append", index=False)
    engine.dispose()
    return {"prediction": row["prediction"].iloc[0]}
