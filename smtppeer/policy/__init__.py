"""Receiving policy: who may send to whom (``routing``), who is who
(``accounts``), where an accepted message goes (``receiving``) and the trace
header each hop adds.  It implements the connection's hooks on top of the
store."""
