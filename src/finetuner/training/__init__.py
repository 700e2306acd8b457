"""Freezing, optimizer parameter groups, learning-rate schedules and the training loop."""
