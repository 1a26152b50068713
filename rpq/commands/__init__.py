"""Typer command functions; each imports its heavy modules only when it runs."""
