"""Typer commands: one module per command, each a thin layer over an importable function."""
