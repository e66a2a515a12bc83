"""Durable storage: the disk work behind every ``250`` as data (``commits``),
the group committer that runs it, the spool of mail still to send, Maildir
delivery, message bodies and queue IDs.  Nothing here decides where mail
goes; it keeps what it is given, durably."""
