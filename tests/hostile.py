"""Hostile payloads for the sensor topics, each invalid by construction.

Every case is a valid message for its node with one defect (or no message at all): random
bytes, truncated or deeply nested JSON, wrong types, NaN and infinities, absurd timestamps,
empty and 10 MB audio, wrong sample rates, base64 garbage. Each case gets a node id of its
own, so its error record can be told apart. Deterministic for a given seed; used by
tests/test_hostile_input.py and benchmarks/hostile_input.py.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinyml_core.messages import AudioClip, ClimateReading
from tinyml_core.topics import SensorKind, sensor_topic

T0 = 1_732_406_400.0
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class HostileCase:
    family: str
    node_id: str
    topic: str
    payload: bytes


def _reading(node_id: str) -> list[dict[str, object]]:
    return json.loads(ClimateReading(node_id, T0, 7, 21.5, 45.0).encode())


def _clip(node_id: str, rng: random.Random) -> list[dict[str, object]]:
    samples = np.array([rng.randint(-2000, 2000) for _ in range(800)], dtype=np.int16)
    return json.loads(AudioClip.from_samples(node_id, T0, 3, 8000, samples).encode())


def _dump(pack: object) -> bytes:
    return json.dumps(pack).encode()


def _set(pack: list[dict[str, object]], name: str, field: str, value: object) -> bytes:
    for record in pack:
        if record.get("n") == name:
            record[field] = value
    return _dump(pack)


WRONG_TYPES: list[object] = ["21.5", None, [], {}, True, "", [1, 2], {"v": 1}]
ABSURD_TIMES: list[object] = [-1e18, -1.0, 0, 1e20, 1e308, 4_102_444_801, 32_503_680_000,
                              T0 * 1000, T0 * 1e6]
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]
WRONG_RATES: list[object] = [0, -16000, 1, 3999, 96_001, 10**12, 16000.5, "16000", None, True]
NOT_BASE64 = "!@#$%^&*()+/= \n\t~`'\"<>?,.;:"


def _random_bytes(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    return rng.randbytes(rng.choice([1, 3, 17, 100, 1000, 5000]))


def _truncated(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    whole = _dump(_reading(node) if kind is SensorKind.CLIMATE else _clip(node, rng))
    return whole[:rng.randrange(0, len(whole) - 1)]


def _deeply_nested(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    depth = rng.choice([64, 500, 5000, 100_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    field = b'{"a":' * depth + b"1" + b"}" * depth  # nested inside a record's value
    return _dump(_reading(node)).replace(b"21.5", field, 1)


def _wrong_type(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    value = rng.choice(WRONG_TYPES)
    if kind is SensorKind.CLIMATE:
        name, field = rng.choice([("temperature", "v"), ("humidity", "v"), ("seq", "v"),
                                  ("temperature", "bt"), ("temperature", "bn"),
                                  ("humidity", "u")])
        return _set(_reading(node), name, field, value)
    name, field = rng.choice([("audio", "vd"), ("sample_rate", "v"), ("channels", "v"),
                              ("sample_format", "vs"), ("seq", "v"), ("audio", "bt")])
    return _set(_clip(node, rng), name, field, value)


def _non_finite(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    literal = rng.choice(NON_FINITE)
    if kind is SensorKind.CLIMATE:
        target = rng.choice([b"21.5", b"45.0", str(T0).encode()])
        return _dump(_reading(node)).replace(target, literal, 1)
    return _set(_clip(node, rng), rng.choice(["sample_rate", "duration", "channels"]), "v",
                12345.678).replace(b"12345.678", literal)


def _absurd_time(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    pack = _reading(node) if kind is SensorKind.CLIMATE else _clip(node, rng)
    pack[0]["bt"] = rng.choice(ABSURD_TIMES)
    return _dump(pack)


def _empty(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    return rng.choice([b"", b" ", b"[]", b"{}", b"null", b'""'])


def _huge(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    if kind is SensorKind.CLIMATE:
        return _set(_reading(node), "humidity", "v", 45.0).replace(b"45.0", b"4" * 5000 + b".0")
    vd = base64.urlsafe_b64encode(rng.randbytes(TEN_MB * 3 // 4)).rstrip(b"=").decode()
    return _set(_clip(node, rng), "audio", "vd", vd)


def _wrong_rate(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    return _set(_clip(node, rng), "sample_rate", "v", rng.choice(WRONG_RATES))


def _base64_garbage(rng: random.Random, node: str, kind: SensorKind) -> bytes:
    pack = _clip(node, rng)
    vd = str(pack[0]["vd"])
    choice = rng.randrange(4)
    if choice == 0:  # a character outside base64url
        at = rng.randrange(len(vd))
        vd = vd[:at] + rng.choice(NOT_BASE64) + vd[at + 1:]
    elif choice == 1:  # a length no encoding produces
        vd = vd[:len(vd) - len(vd) % 4 + 1] if len(vd) % 4 != 1 else vd
    elif choice == 2:  # an odd number of bytes: not 16-bit samples
        vd = base64.urlsafe_b64encode(rng.randbytes(2 * rng.randrange(1, 400) + 1)).decode()
        vd = vd.rstrip("=")
    else:  # padded (the protocol's base64url has none)
        vd = base64.urlsafe_b64encode(rng.randbytes(rng.randrange(1, 400) * 3 + 1)).decode()
    pack[0]["vd"] = vd
    return _dump(pack)


Family = Callable[[random.Random, str, SensorKind], bytes]
BOTH_TOPICS: dict[str, Family] = {
    "random bytes": _random_bytes, "truncated json": _truncated, "deeply nested": _deeply_nested,
    "wrong type": _wrong_type, "nan and infinity": _non_finite, "absurd timestamp": _absurd_time,
    "empty": _empty,
}
AUDIO_ONLY: dict[str, Family] = {"wrong sample rate": _wrong_rate,
                                 "base64 garbage": _base64_garbage}


def hostile_cases(count: int = 1000, seed: int = 7, huge: int = 2) -> list[HostileCase]:
    """``count`` cases spread over every family and both topics, plus ``huge`` oversized ones
    per topic (10 MB clips on the audio topic)."""
    rng = random.Random(seed)
    plan = [(name, family, kind) for name, family in BOTH_TOPICS.items()
            for kind in (SensorKind.CLIMATE, SensorKind.AUDIO)]
    plan += [(name, family, SensorKind.AUDIO) for name, family in AUDIO_ONLY.items()]
    cases = []
    for index in range(count):
        name, family, kind = plan[index % len(plan)]
        node = f"fuzz-{index:05d}"
        cases.append(HostileCase(name, node, sensor_topic(node, kind), family(rng, node, kind)))
    for index in range(count, count + 2 * huge):
        kind = SensorKind.CLIMATE if index % 2 else SensorKind.AUDIO
        node = f"fuzz-{index:05d}"
        name = "oversized" if kind is SensorKind.CLIMATE else "10 MB audio"
        cases.append(HostileCase(name, node, sensor_topic(node, kind), _huge(rng, node, kind)))
    return cases
