"""`python -m merino_mobile` is the `merino-mobile` command."""

from merino_mobile.cli import main

main()
