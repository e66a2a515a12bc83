"""The connection: ``SMTPPeer``, the one Twisted protocol that plays either SMTP
role and turns around on the same connection, and what it asks of the mail
system (``hooks``).  It knows the engine below it and nothing above: the
mail system implements the hooks."""
