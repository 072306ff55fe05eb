"""Data: safe image I/O, cleaning, clustering, augmentation, synthetic data and torch datasets."""
