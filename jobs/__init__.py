"""The domain shared by the API and the workers: job spec, store, artifacts, settings, queue.

No torch and no FastAPI here.
"""
