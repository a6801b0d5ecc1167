"""capture/ commands of the root ``parity`` CLI (loaded lazily by analyze/cli/main.py)."""
