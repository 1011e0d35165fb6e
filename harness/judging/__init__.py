"""The verdict: the oracle watches a transaction (or shm sites) against tm's timers."""
