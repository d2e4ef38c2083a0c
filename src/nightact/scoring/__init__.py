"""Scoring trained runs: evaluation with intervals, the darkness sweep and the comparison report."""
