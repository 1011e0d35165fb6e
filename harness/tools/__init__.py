"""The `kamleak` command line and the tools behind it: soak, bench, bisection, lint, watch."""
