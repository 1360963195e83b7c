"""`python -m storegate` runs the command line."""

from storegate.cli.main import main

raise SystemExit(main())
