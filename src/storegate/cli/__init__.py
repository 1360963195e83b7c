"""The storegate command."""
