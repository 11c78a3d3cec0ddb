"""`python -m cliproxy.fake_upstream ...`: the same as `cliproxy fake-upstream ...`."""

import sys

from cliproxy.fake_upstream.cli import main

sys.exit(main())
