"""Scoring candidates: accuracy on a data split, exact compressed size, measured latency."""
