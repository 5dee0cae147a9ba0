"""Celery workers: adaptation jobs (and, next, RL runs) on machines that hold the model."""
