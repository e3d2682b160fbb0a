"""Seeded generators of demo data for each task (no downloads: everything is made here)."""
