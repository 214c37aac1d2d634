"""The endpoints, one router per resource: predictions, the served model, health and metrics."""
