"""docs/protocol.md and the codec agree: every example decodes, every limit matches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tinyml_core import messages
from tinyml_core.messages import Availability, decode_message

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
EXAMPLES = re.findall(r"```(json|text) topic=(\S+)\n(.*?)```", DOC, flags=re.DOTALL)
LIMITS = re.findall(r"^\| `([A-Z_]+)` \| ([-0-9.]+) \|", DOC, flags=re.MULTILINE)


def test_the_doc_has_an_example_for_every_topic_kind() -> None:
    topics = {re.sub(r"/pi-kitchen", "/<node>", topic) for _, topic, _ in EXAMPLES}
    assert topics == {"sensors/<node>/climate", "sensors/<node>/audio",
                      "predictions/<node>/forecast", "predictions/<node>/keyword",
                      "status/<node>", "errors/<node>", "confirmed/<node>/climate",
                      "diagnostics/<node>", "enroll/<node>", "enrolled/<node>"}


@pytest.mark.parametrize(("kind", "topic", "body"), EXAMPLES, ids=[t for _, t, _ in EXAMPLES])
def test_example_decodes_and_encodes_back_to_the_same_document(kind: str, topic: str,
                                                               body: str) -> None:
    payload = body.strip().encode()
    message = decode_message(topic, payload)
    if kind == "text":
        assert message is Availability(body.strip())
        return
    # Same document (key order and spacing aside); numbers compare exactly.
    assert json.loads(message.encode()) == json.loads(payload)


def test_limits_table_matches_the_constants() -> None:
    assert len(LIMITS) >= 10
    for name, value in LIMITS:
        assert float(getattr(messages, name)) == float(value), name
