"""`kamleak explore`: generate call flows, run them on real Kamailio, judge what is left.

flow: the flows and their generator (Hypothesis).
"""
