"""Adapters that run fdlite inside other frameworks' batch jobs (``fdlite.integrations.ray``: Ray Data)."""
