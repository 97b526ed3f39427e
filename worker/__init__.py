"""The worker side: Celery tasks, the job runner, and the model and dataset registries.

Only this side loads torch models (see DESIGN.md).
"""
