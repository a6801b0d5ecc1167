"""capture/ commands of the root ``parity`` CLI (their table: capture/cli/commands.py; composed by workflows/cli/main.py)."""
