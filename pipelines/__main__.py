"""`python -m pipelines <job> ...`: see pipelines.cli."""
from pipelines.cli import main

raise SystemExit(main())
