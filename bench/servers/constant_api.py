"""The HTTP layer's ceiling: a FastAPI endpoint that answers a constant (run with uvicorn, one worker)."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()
ANSWER = {"predicted_class": "NO", "risk_30_days": 0.1}


@app.post("/predict")
async def predict() -> dict[str, object]:
    return ANSWER
