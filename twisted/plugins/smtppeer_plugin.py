"""twistd plugin: ``twistd -n smtppeer [options]``.  Kept tiny on purpose: an
import error here only logs and makes the subcommand vanish."""

from twisted.application.service import ServiceMaker

smtppeer = ServiceMaker(
    "smtppeer",
    "smtppeer.app",
    "A bidirectional SMTP peer for hosts that are not always online (TURN, ATRN, ETRN)",
    "smtppeer",
)
