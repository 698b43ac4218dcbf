"""Errors about input data, raised with the offending input named."""


class InputDataError(ValueError):
    """An input file or table cannot be used at all (missing SMILES column,
    wrong task count, unreadable format). Row-level problems are never raised:
    they go to the rejects table with a reason."""


class SpecMismatchError(InputDataError):
    """Fingerprints made with one spec were given to something built for
    another (the message names both specs)."""
