"""Test and benchmark support: corpora of known copies and of shifted cameras (not installed)."""
