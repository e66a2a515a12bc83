"""Sending: the queue runner (scheduling, attempts, results and bounces),
releasing hold queues to the peers that own them, poll cycles and their
schedules, and MX lookups."""
