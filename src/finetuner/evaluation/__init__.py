"""Metrics (scikit-learn), predictions and the pictures a person looks at."""
