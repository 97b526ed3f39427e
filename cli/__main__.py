"""`python -m spartan_service.cli` is the `spartan` command."""

import sys

from spartan_service.cli.main import main

sys.exit(main())
