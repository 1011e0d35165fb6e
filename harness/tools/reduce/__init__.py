"""`kamleak reduce`: the smallest config that still leaks, and the statements it needs."""
