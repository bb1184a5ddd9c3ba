"""Figures and statistics over runs."""
