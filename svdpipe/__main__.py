"""`python -m svdpipe` is the `svdpipe` command."""

from svdpipe.cli import main

raise SystemExit(main())
