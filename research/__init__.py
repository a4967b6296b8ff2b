"""Recipes that made the shipped weights (not installed): datasets, LOSO experiments."""
