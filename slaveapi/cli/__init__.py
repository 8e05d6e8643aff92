"""
C{slaveapi-cli}: SlaveAPI from a shell.

A synchronous client (the standard library's HTTP, C{click} for the
commands, C{rich} for tables and progress) for operators and scripts; see
C{docs/cli.rst}. It needs no reactor: it only talks HTTP to a running
service.
"""

from __future__ import annotations

from slaveapi.cli._commands import cli, main

__all__ = ["cli", "main"]
