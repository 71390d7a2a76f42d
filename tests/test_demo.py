"""The README's demo command, end to end on the bundled samples."""

from __future__ import annotations

import pytest

from demo.__main__ import main
from tests.conftest import _require_mosquitto


def test_demo_with_private_mosquitto(capsys: pytest.CaptureFixture[str]) -> None:
    _require_mosquitto()
    assert main([]) == 0
    output = capsys.readouterr().out
    assert "broker: private Mosquitto" in output
    assert "node published 310 messages" in output and "broker acknowledged 310" in output
    assert "status/demo-node               offline" in output
    assert "the sample says 'yes'" in output
    # The collector ran on the shipped models: a forecast per full window, a keyword result
    # per clip (16 words, 4 other words, 2 noises).
    assert "collector: 283 from forecast_a, 283 from forecast_b" in output
    assert "588 predictions, 0 error records" in output
    recognised = int(output.split("keywords: ")[1].split(" of 16")[0])
    assert recognised >= 12
    # The replayed clips are single clips, decided at kws_e's clip threshold (0.40), where
    # 97.7 % of strangers' other words stay `unknown`: of these four, "bed" comes back
    # "left" (0.45); the two noises and the other three words stay `unknown`.
    assert "5 of 6 other words and noises answered 'unknown'" in output
    # A second speaker's "go", answered `unknown`, then right once they enrolled over the broker.
    assert "before enrolling: 'unknown'" in output
    assert "demo-collector: enrolled sam: 8 takes of 8 words" in output
    after = output.split("after enrolling:")[1].splitlines()[0]
    assert after.startswith("  'go'") and "+enrolled-" in after
    # A third teaches the node "happy", no keyword, from two takes; their third is then found.
    assert "demo-collector: enrolled kim: 2 takes of 1 word, 0 pieces of speech; its own " \
           "words: happy" in output
    happy = output.split("after enrolling:")[2].splitlines()[0]
    assert happy.startswith("  'happy'") and "+enrolled-" in happy


def test_demo_with_embedded_broker(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("amqtt")
    assert main(["--embedded-broker", "--speed", "0"]) == 0
    output = capsys.readouterr().out
    assert "broker: embedded amqtt" in output
    assert "this printout decoded 310 sensor messages" in output
    assert "collector: 283 from forecast_a, 283 from forecast_b" in output
