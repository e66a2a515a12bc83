"""smtppeer: a bidirectional SMTP peer for hosts that are not always online."""

__version__ = "0.1.0"
