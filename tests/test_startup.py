"""What `cliproxy serve` tells the operator when it starts."""

from __future__ import annotations

import signal

from tests.processes import GatewayProcess


class TestStartupWarnings:
    """An open gateway and a vendor switched off by a missing key are warned about at start-up."""

    def test_open_gateway_and_missing_key_are_warned(self, tmp_path):
        config = {
            "openai-compatibility": [
                {
                    "name": "hosted",
                    "base-url": "https://example.invalid/v1",
                    "api-key-entries": [{"api-key": "${HOSTED_KEY:-}"}],
                    "models": [{"name": "m"}],
                },
                {"name": "local", "base-url": "http://127.0.0.1:9/v1", "models": [{"name": "m"}]},
            ]
        }
        gw = GatewayProcess(tmp_path, config).start()
        assert gw.stop(signal.SIGTERM) == 0
        log = gw.log()
        assert "WARNING cliproxy api-keys is empty" in log
        assert "vendor hosted is off: every api-key of it is empty" in log
        assert "vendor local is off" not in log
