"""`python -m cliproxy ...`: the same as the `cliproxy` command (handy when no script is on PATH)."""

import sys

from cliproxy.cli import main

sys.exit(main())
