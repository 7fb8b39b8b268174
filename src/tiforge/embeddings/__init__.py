"""Embedding files: every tool's layout, conversion, inspection, hub upload, generation."""
