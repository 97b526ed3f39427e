"""`python -m service` is the `spartan` command."""

import sys

from service.cli import main

sys.exit(main())
