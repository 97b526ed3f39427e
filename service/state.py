"""What one API process holds: its settings, the job store, the artifact and upload stores,
the Celery app.

Built lazily (first request, or the app's startup) so that importing or creating the app
touches neither the database nor the broker.
"""

from __future__ import annotations

import threading

from celery import Celery

from spartan_service.jobs.artifacts import ArtifactStore
from spartan_service.jobs.queue import make_celery
from spartan_service.jobs.results import ResultsCache
from spartan_service.jobs.settings import Settings
from spartan_service.jobs.store import JobStore
from spartan_service.jobs.upload_store import UploadStore
from spartan_service.service.fitting import FitPool


class Resources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.artifacts = ArtifactStore(settings.artifacts_dir)
        self.uploads = UploadStore(self.artifacts.storage)
        self.results = ResultsCache(self.artifacts)
        self._lock = threading.Lock()
        self._store: JobStore | None = None
        self._celery: Celery | None = None
        self.fit_pool = FitPool(settings.fit_processes)

    @property
    def ready(self) -> bool:
        """Store and Celery app are built (reading them cannot block)."""
        return self._store is not None and self._celery is not None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = JobStore(self.settings.db_url)
        return self._store

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            with self._lock:
                if self._celery is None:
                    self._celery = make_celery(self.settings)
        return self._celery

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._celery is not None:
                self._celery.close()
                self._celery = None
