"""Serving code for the Iris classifier: schemas, auth, errors, batching, settings and logging."""
