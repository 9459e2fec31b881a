"""Runnable examples referenced from the README."""
