"""Numbered SQL migrations, one folder per store backend."""
