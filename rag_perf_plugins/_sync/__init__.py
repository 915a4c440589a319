"""Blocking twins of the async classes (ConnectionPool)."""
