"""Errors a user can act on; the CLI prints them as one line and exits 2."""


class UserError(RuntimeError):
    """A job cannot go on because of something the user gave or configured
    (a model URI that does not resolve, a library featurized with another
    fingerprint spec, a Ray address that does not answer...)."""
