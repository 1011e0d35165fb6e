"""kamleak's own test suite uses the plugin the package registers (pytest11)."""
