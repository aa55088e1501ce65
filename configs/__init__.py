"""Experiment configs (ml_collections). `base.py` holds every field; each experiment overrides it."""
