"""`python -m pipelines <job> ...`: see pipelines.cli."""
from pipelines.platform.torch_setup import use_huge_pages

use_huge_pages()  # before any job allocates; local Ray workers inherit it

from pipelines.cli import main  # noqa: E402

raise SystemExit(main())
