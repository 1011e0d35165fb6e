"""kamleak's harness: what runs (stack), the user agents (sip), what Kamailio holds (probes),
the verdict (judging), its explanation (reporting), and the entrances (tools, plugin).
Lower layers never import higher ones; stories are found through `registry`."""
