"""`python -m svdpipe.bench ...`: the same as `svdpipe bench ...`."""

from svdpipe.bench.cli import main

raise SystemExit(main())
