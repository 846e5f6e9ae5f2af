"""Errors a user can act on. The CLI prints their message as one line; anything else is a bug."""


class SpamtuneError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 1


class SpamtuneUsageError(SpamtuneError):
    """The command line itself is wrong (exit code 2, like a shell usage error)."""

    exit_code = 2


# sysexits.h: a temporary failure. A mail server (Postfix pipe(8), sendmail, procmail) reads it
# as "keep the message and try again later".
EX_TEMPFAIL = 75


class TemporaryFailure(SpamtuneError):
    """Nothing done that cannot be done again later: exit status 75 (``EX_TEMPFAIL``)."""

    exit_code = EX_TEMPFAIL


class SpamtuneWarning(UserWarning):
    """Something the user must hear of that does not stop the work (``warnings.warn`` it): the
    CLI prints it as one ``WARNING:`` line, even under ``--quiet``, once per command."""


class OptionError(SpamtuneUsageError):
    """One option has a value that cannot work.

    The core does not know the command line: its message says ``{option}`` where the option's
    name goes, which reads as plain words here (``batch size``) and as the flag in the CLI
    (``--batch-size``, see ``naming``). Usage errors exit 2; an option the machine cannot honour
    (a device that is not there) passes ``exit_code=1``.
    """

    def __init__(self, option: str, message: str, exit_code: int = 2):
        self.option, self.message, self.exit_code = option, message, exit_code
        if "{option}" not in message:
            self.message = "{option} " + message
        super().__init__(self.naming(option.replace("_", " ")))

    def naming(self, name: str) -> str:
        """The message with ``name`` for the option (str.replace: values may hold braces)."""
        return self.message.replace("{option}", name)


class DiskFull(SpamtuneError):
    """A write ran out of space; the file it was replacing, if any, is untouched."""

    def __init__(self, path):
        super().__init__(f"disk full: {path}")
        self.path = path


class RanksInterrupted(Exception):
    """``--devices N`` stopped by Ctrl-C or SIGTERM, which the launcher passed on to the ranks;
    exit status 128 + the signal. ``said``: rank 0 has said what the interrupt left (finetune's
    checkpoint), so the launcher adds no line of its own."""

    def __init__(self, signum: int, said: bool) -> None:
        super().__init__("interrupted")
        self.exit_code = 128 + int(signum)
        self.said = said
