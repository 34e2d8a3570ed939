"""`python -m dmx.cli ...` = `dmx ...`."""

from dmx.cli import main

raise SystemExit(main())
