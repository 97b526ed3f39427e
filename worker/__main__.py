"""`python -m spartan_service.worker`: start a Celery worker (see spartan_service.worker.main).

`-m` puts the current directory first on the import path: a `profile.py` or `jobs.py` there
would be imported instead of the library's (a worker started from a user's folder then
crash-loops). That entry is dropped before anything else is imported, unless it is the
project's own checkout (running from the repository root without an install).
"""

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() != Path(__file__).resolve().parents[1]:
    del sys.path[0]

from spartan_service.worker.main import main  # noqa: E402

main()
