"""Helpers for verifying ports against references (golden fixtures). Pure numpy."""
