"""One module per job: HELP, add_arguments(parser), run(args) -> int (see pipelines.cli)."""
