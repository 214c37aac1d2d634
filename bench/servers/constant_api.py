"""The HTTP layer's ceiling: a FastAPI endpoint that receives the same request body and answers a constant
(run with uvicorn, one worker). The body is read, not parsed: what is left is uvicorn + FastAPI routing."""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()
ANSWER = {"predicted_class": "NO", "risk_30_days": 0.1}


@app.post("/predict")
async def predict(request: Request) -> dict[str, object]:
    await request.body()
    return ANSWER
