"""``python -m spamtune``: the same entry point as the ``spamtune`` console script."""

from spamtune.entry import main

main()
