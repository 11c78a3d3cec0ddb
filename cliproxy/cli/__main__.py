"""`python -m cliproxy.cli ...`: the same as the `cliproxy` command (the tests start the server this way)."""

import sys

from cliproxy.cli import main

sys.exit(main())
