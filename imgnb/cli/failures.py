"""How a command refuses to start: one named error per exit status.

A worker is often run by a supervisor (systemd, Kubernetes, a batch script) that restarts it when it
exits with an error. Exit status 2 says "the command line is wrong, restarting will not help";
status 1 says "it failed this time" (a factory that raised, a database that did not answer), which a
restart may cure. ``main`` prints the message as one line on stderr and exits with the status.
"""

from __future__ import annotations

from ..errors import ImgnbError

__all__ = ["BadArgument", "CommandError", "StartFailed"]


class CommandError(ImgnbError):
    """The command could not start."""

    exit_code = 1


class BadArgument(CommandError):
    """An argument names something that does not exist or cannot be used (exit status 2)."""

    exit_code = 2


class StartFailed(CommandError):
    """The arguments are sound but starting failed: a factory raised, the database cannot be used
    (exit status 1)."""

    exit_code = 1
