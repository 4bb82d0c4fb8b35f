"""Trajectory records of RLM runs: recording, storage, and what the runs API reads."""
