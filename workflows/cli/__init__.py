"""The root ``parity`` CLI: the composition layer above capture/ and analyze/ (workflows/cli/main.py)."""
