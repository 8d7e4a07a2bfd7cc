"""Errors a user can act on: the CLI prints their message as one line, no traceback.

``UsageError`` (exit 2): the command was asked for something that cannot work (a bad flag
value, a missing folder, a device this machine lacks). ``FoodlabError`` (exit 1): the work
started and failed for a reason the message names (mostly-bad data, a dead tracking
server, a full disk). Messages say what is wrong and what to do, in one line.
"""
from __future__ import annotations


class FoodlabError(RuntimeError):
    """A failure at run time whose message is the whole story (exit code 1)."""

    exit_code = 1


class UsageError(FoodlabError, ValueError):
    """A bad invocation or input, refused before any work (exit code 2)."""

    exit_code = 2
