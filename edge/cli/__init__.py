"""The `edge` command: one module per command group, parsing arguments and printing only. The top of the import
graph — the only package that imports from both `edge.device` and `edge.operator`."""

from edge.cli.main import main

__all__ = ["main"]
