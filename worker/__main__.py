"""`python -m worker`: start a Celery worker (see worker.main)."""

from worker.main import main

main()
