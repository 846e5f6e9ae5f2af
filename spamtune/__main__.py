"""``python -m spamtune``: the same entry point as the ``spamtune`` console script (``main``
sets the thread wait policy before any command imports torch)."""

from spamtune.cli import main

main()
