"""Evaluation: metrics, HTML reports, and the promotion gate."""
