from spamtune.cli import main

main()
