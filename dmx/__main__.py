"""`python -m dmx ...`: the `dmx` command."""

from dmx.cli import main

raise SystemExit(main())
