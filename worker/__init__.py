"""The worker side: Celery tasks, the job runner, and the dataset registry.

Only this side (with the tooling) loads torch models, built by spartan_service.zoo.
"""
