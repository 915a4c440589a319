"""Async classes (AsyncConnectionPool)."""
