"""Datasets, training and evaluation of the classifier and detector, and X-ray synthesis."""
