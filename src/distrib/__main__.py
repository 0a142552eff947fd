"""``python -m distrib``: the command line."""

from distrib._cli import main

main()
