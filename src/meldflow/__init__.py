"""meldflow: MELD dialogue clips to aligned multimodal Parquet shards and Florence-2 training."""

__version__ = "0.1.0"


class MeldflowError(Exception):
    """An error meant for the user: the message says what is wrong and what to do."""
