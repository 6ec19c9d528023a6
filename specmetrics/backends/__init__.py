"""Spectrum backends."""
