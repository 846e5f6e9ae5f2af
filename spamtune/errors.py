"""Errors a user can act on. The CLI prints their message as one line; anything else is a bug."""


class SpamtuneError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 1


class SpamtuneUsageError(SpamtuneError):
    """The command line itself is wrong (exit code 2, like a shell usage error)."""

    exit_code = 2
