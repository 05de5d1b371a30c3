"""`python -m executor` runs the cbexec command."""

import sys

from executor.cli import main

sys.exit(main())
