"""A fake OpenAI-compatible upstream with failure injection, for tests, drills, demos and benchmarks.

    from cliproxy.fake_upstream import FakeUpstream, Fault

`server` is the upstream itself, `faults` what it can be told to do wrong, `payloads` what it
answers otherwise, `responses` how it writes an answer (whole or broken), `cli` the `cliproxy fake-upstream` command (also `python -m cliproxy.fake_upstream`).
"""

from cliproxy.fake_upstream.cli import main
from cliproxy.fake_upstream.faults import Fault
from cliproxy.fake_upstream.server import DEFAULT_MODELS, FakeUpstream, RecordedRequest

__all__ = ["DEFAULT_MODELS", "Fault", "FakeUpstream", "RecordedRequest", "main"]
