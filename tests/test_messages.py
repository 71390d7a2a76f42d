"""The codec on its own: round trips, and every malformed variant rejected with a reason."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyml_core.errors import PayloadError
from tinyml_core.messages import (
    MAX_TIME_S,
    MIN_TIME_S,
    AudioClip,
    Availability,
    ClimateReading,
    ErrorRecord,
    Forecast,
    ForecastStep,
    KeywordResult,
    decode_message,
    decode_sensor_message,
)

T0 = 1_732_406_400.0  # 2024-11-24 00:00:00 UTC


def climate_pack(**changes: object) -> list[dict[str, object]]:
    pack: list[dict[str, object]] = [
        {"bn": "pi-1/", "bt": T0, "n": "temperature", "u": "Cel", "v": 21.5},
        {"n": "humidity", "u": "%RH", "v": 45.0},
        {"n": "seq", "v": 7},
    ]
    for key, value in changes.items():
        index, field = key.split("__")
        if value is _DELETE:
            del pack[int(index)][field]
        else:
            pack[int(index)][field] = value
    return pack


def audio_pack(samples: int = 160, rate: int = 16000) -> list[dict[str, object]]:
    pcm = np.arange(samples, dtype="<i2").tobytes()
    return [
        {"bn": "pi-1/", "bt": T0, "n": "audio",
         "vd": base64.urlsafe_b64encode(pcm).rstrip(b"=").decode()},
        {"n": "sample_rate", "u": "Hz", "v": rate},
        {"n": "sample_format", "vs": "s16le"},
        {"n": "channels", "v": 1},
        {"n": "duration", "u": "s", "v": samples / rate},
        {"n": "seq", "v": 3},
    ]


_DELETE = object()


def dump(document: object) -> bytes:
    return json.dumps(document).encode()


def with_record(pack: list[dict[str, object]], index: int, **fields: object) -> bytes:
    pack[index].update(fields)
    return dump(pack)


# --- round trips -----------------------------------------------------------------------------
def test_climate_round_trip_keeps_every_value() -> None:
    reading = ClimateReading("pi-1", T0 + 0.125, 123456, -12.34, 99.9)
    assert ClimateReading.decode(reading.encode()) == reading


def test_climate_wire_format_is_a_senml_pack() -> None:
    document = json.loads(ClimateReading("pi-1", T0, 7, 21.5, 45.0).encode())
    assert document == climate_pack()


def test_audio_round_trip_keeps_samples_and_rate() -> None:
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    clip = AudioClip.from_samples("pi-1", T0, 9, 48000, samples)
    decoded = AudioClip.decode(clip.encode())
    assert decoded == clip
    np.testing.assert_array_equal(decoded.samples, samples)
    assert decoded.duration == pytest.approx(6 / 48000)


def test_audio_vd_is_base64url_without_padding() -> None:
    clip = AudioClip.from_samples("pi-1", T0, 9, 16000, np.full(5, -1, dtype=np.int16))
    vd = json.loads(clip.encode())[0]["vd"]
    assert "=" not in vd and "+" not in vd and "/" not in vd
    assert vd == "_____________w"  # 10 bytes of 0xff


def test_audio_from_float_samples_is_refused() -> None:
    with pytest.raises(PayloadError, match="int16"):
        AudioClip.from_samples("pi-1", T0, 0, 16000, np.zeros(10, dtype=np.float32))


def test_forecast_and_keyword_round_trip() -> None:
    forecast = Forecast("pi-1", "forecast_a", "1+abc", T0, 0.42,
                        tuple(ForecastStep(T0 + 600 * i, 20 + i, 50 - i) for i in (1, 2, 3)))
    assert Forecast.decode(forecast.encode()) == forecast
    keyword = KeywordResult("pi-1", "kws_b", "1+def", T0, 3.5, 0.04, "yes",
                            {"yes": 0.9, "no": 0.06, "up": 0.04})
    decoded = KeywordResult.decode(keyword.encode())
    assert decoded == keyword and decoded.probability == 0.9


def test_unknown_label_has_zero_probability() -> None:
    result = KeywordResult("pi-1", "kws_c", "1", T0, 1.0, 0.1, "unknown", {"yes": 0.5, "no": 0.5})
    assert KeywordResult.decode(result.encode()).probability == 0.0


def test_error_record_keeps_hostile_bytes_escaped() -> None:
    payload = b"\xff\x00{not json" * 20
    record = ErrorRecord.for_rejected("pi-1", T0, "sensors/pi-1/climate", payload,
                                      PayloadError("bad", field="x"))
    decoded = ErrorRecord.decode(record.encode())
    assert decoded == record
    assert decoded.payload_size == len(payload)
    assert decoded.payload_head.startswith("\\xff\\x00{not json")
    assert len(decoded.payload_head.encode()) < 4 * 64 + 1


def test_availability_words() -> None:
    assert Availability.decode(b"online") is Availability.ONLINE
    assert Availability.OFFLINE.encode() == b"offline"
    with pytest.raises(PayloadError, match="online"):
        Availability.decode(b"ONLINE")


def test_decode_message_dispatches_on_topic() -> None:
    reading = ClimateReading("pi-1", T0, 1, 20.0, 40.0)
    assert decode_message("sensors/pi-1/climate", reading.encode()) == reading
    assert decode_message("status/collector-1", b"offline") is Availability.OFFLINE
    with pytest.raises(PayloadError, match="not part of the protocol"):
        decode_message("weather/pi-1", reading.encode())


@given(
    node=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    time=st.floats(MIN_TIME_S, MAX_TIME_S),
    seq=st.integers(0, 2**53 - 1),
    temperature=st.floats(-80, 80),
    humidity=st.floats(0, 100),
)
def test_climate_round_trip_property(node: str, time: float, seq: int, temperature: float,
                                     humidity: float) -> None:
    reading = ClimateReading(node, time, seq, temperature, humidity)
    assert decode_sensor_message(f"sensors/{node}/climate", reading.encode()) == reading


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_payload_error(payload: bytes) -> None:
    for topic in ("sensors/pi-1/climate", "sensors/pi-1/audio", "predictions/pi-1/forecast",
                  "predictions/pi-1/keyword", "errors/pi-1", "status/pi-1"):
        try:
            decode_message(topic, payload)
        except PayloadError as error:
            assert error.reason


@given(
    rate=st.integers(4000, 96_000),
    samples=st.lists(st.integers(-32768, 32767), min_size=1, max_size=400),
    seq=st.integers(0, 2**53 - 1),
)
def test_audio_round_trip_property(rate: int, samples: list[int], seq: int) -> None:
    clip = AudioClip.from_samples("pi-1", T0, seq, rate, np.array(samples, dtype=np.int16))
    decoded = decode_sensor_message("sensors/pi-1/audio", clip.encode())
    assert isinstance(decoded, AudioClip)
    assert (decoded.sample_rate, decoded.seq, decoded.samples.tolist()) == (rate, seq, samples)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=10)


@given(record=st.integers(0, 5), field=st.sampled_from(["bn", "bt", "n", "u", "v", "vs", "vd",
                                                         "t", "x"]), value=JSON_VALUES,
       audio=st.booleans())
def test_any_field_set_to_any_json_value_decodes_or_is_a_payload_error(
        record: int, field: str, value: object, audio: bool) -> None:
    pack = audio_pack() if audio else climate_pack()
    pack[record % len(pack)][field] = value
    payload = json.dumps(pack).encode()  # NaN and Infinity too: Python writes them
    topic = AUDIO_TOPIC if audio else CLIMATE_TOPIC
    try:
        decoded = decode_sensor_message(topic, payload)
    except PayloadError as error:
        assert error.reason
    else:  # accepted only what re-encodes to the same message
        assert decode_sensor_message(topic, decoded.encode()).encode() == decoded.encode()


# --- malformed input: each case names what must appear in the reason --------------------------
CLIMATE_TOPIC = "sensors/pi-1/climate"
AUDIO_TOPIC = "sensors/pi-1/audio"

MALFORMED: list[tuple[str, str, bytes, str]] = [
    # (case id, topic, payload, expected words in the reason)
    ("empty", CLIMATE_TOPIC, b"", "empty"),
    ("not utf-8", CLIMATE_TOPIC, b"\xff\xfe[]", "UTF-8"),
    ("not json", CLIMATE_TOPIC, b"temperature=21", "not valid JSON"),
    ("truncated json", CLIMATE_TOPIC, dump(climate_pack())[:-5], "not valid JSON"),
    ("object not pack", CLIMATE_TOPIC, dump({"temperature": 21}), "SenML pack"),
    ("empty pack", CLIMATE_TOPIC, b"[]", "non-empty"),
    ("record not object", CLIMATE_TOPIC, b'[{"bn":"pi-1/","bt":1732406400,"n":"seq","v":1}, 3]',
     "record 1 must be a JSON object"),
    ("deeply nested", CLIMATE_TOPIC, b"[" * 100_000 + b"]" * 100_000, "limit"),
    ("nested within limit", CLIMATE_TOPIC, b"[" * 1000 + b"]" * 1000, "nested too deeply"),
    ("NaN literal", CLIMATE_TOPIC, dump(climate_pack()).replace(b"21.5", b"NaN"), "NaN"),
    ("Infinity literal", CLIMATE_TOPIC, dump(climate_pack()).replace(b"45.0", b"-Infinity"),
     "-Infinity"),
    ("temperature as string", CLIMATE_TOPIC, dump(climate_pack(**{"0__v": "21.5"})),
     "must be a number"),
    ("temperature as bool", CLIMATE_TOPIC, dump(climate_pack(**{"0__v": True})),
     "must be a number"),
    ("temperature too hot", CLIMATE_TOPIC, dump(climate_pack(**{"0__v": 500.0})), "outside"),
    ("humidity above 100", CLIMATE_TOPIC, dump(climate_pack(**{"1__v": 100.5})), "outside"),
    ("humidity negative", CLIMATE_TOPIC, dump(climate_pack(**{"1__v": -1})), "outside"),
    ("wrong unit", CLIMATE_TOPIC, dump(climate_pack(**{"0__u": "K"})), "unit 'Cel'"),
    ("missing unit", CLIMATE_TOPIC, dump(climate_pack(**{"1__u": _DELETE})), "unit '%RH'"),
    ("missing humidity", CLIMATE_TOPIC, dump(climate_pack()[:1] + climate_pack()[2:]),
     "no 'humidity' record"),
    ("extra record", CLIMATE_TOPIC, dump([*climate_pack(), {"n": "pressure", "v": 1000}]),
     "unexpected records pressure"),
    ("duplicate record", CLIMATE_TOPIC, dump([*climate_pack(), {"n": "seq", "v": 8}]),
     "appears twice"),
    ("duplicate key", CLIMATE_TOPIC,
     dump(climate_pack()).replace(b'"v": 45.0', b'"v": 45.0, "v": 46.0'), "key 'v' appears twice"),
    ("unknown senml field", CLIMATE_TOPIC, dump(climate_pack(**{"1__ut": 60})),
     "unsupported fields ut"),
    ("must-understand field", CLIMATE_TOPIC, dump(climate_pack(**{"0__bfoo_": 1})),
     "unsupported fields bfoo_"),
    ("time offset", CLIMATE_TOPIC, dump(climate_pack(**{"1__t": 5})), "time offset"),
    ("base time missing", CLIMATE_TOPIC, dump(climate_pack(**{"0__bt": _DELETE})),
     "must be a number"),
    ("base time in ms", CLIMATE_TOPIC, dump(climate_pack(**{"0__bt": T0 * 1000})), "outside"),
    ("base time 1970", CLIMATE_TOPIC, dump(climate_pack(**{"0__bt": 0})), "outside"),
    ("base name missing", CLIMATE_TOPIC, dump(climate_pack(**{"0__bn": _DELETE})),
     "must be a string"),
    ("base name without slash", CLIMATE_TOPIC, dump(climate_pack(**{"0__bn": "pi-1"})),
     "<node_id>/"),
    ("base name with wildcard", "sensors/pi-1/climate", dump(climate_pack(**{"0__bn": "pi+/"})),
     "not a valid node id"),
    ("base name changed later", CLIMATE_TOPIC, dump(climate_pack(**{"1__bn": "pi-2/"})),
     "may not change"),
    ("node differs from topic", "sensors/pi-2/climate", dump(climate_pack()),
     "published on 'sensors/pi-2/climate'"),
    ("seq negative", CLIMATE_TOPIC, dump(climate_pack(**{"2__v": -1})), "outside"),
    ("seq fractional", CLIMATE_TOPIC, dump(climate_pack(**{"2__v": 1.5})), "must be an integer"),
    ("seq as vs", CLIMATE_TOPIC, dump(climate_pack(**{"2__vs": "7"})), "exactly one value"),
    ("oversized climate", CLIMATE_TOPIC, b"[" + b" " * 5000 + b"]", "limit is 4096"),
    ("bad topic kind", "sensors/pi-1/pressure", dump(climate_pack()), "unknown sensor kind"),
    ("bad topic shape", "sensors/pi-1", dump(climate_pack()), "sensors/<node_id>/<kind>"),
    ("audio vd not base64", AUDIO_TOPIC, with_record(audio_pack(), 0, vd="!!!notbase64"),
     "base64url"),
    ("audio vd with padding", AUDIO_TOPIC, with_record(audio_pack(), 0, vd="AAA="),
     "base64url"),
    ("audio vd impossible length", AUDIO_TOPIC, with_record(audio_pack(), 0, vd="AAAAA"),
     "base64url"),
    ("audio empty", AUDIO_TOPIC, with_record(audio_pack(0), 0, vd=""), "no samples"),
    ("audio odd bytes", AUDIO_TOPIC, with_record(audio_pack(), 0, vd="AAAA"), "whole number"),
    ("audio wrong rate", AUDIO_TOPIC, with_record(audio_pack(), 1, v=100), "outside"),
    ("audio rate fractional", AUDIO_TOPIC, with_record(audio_pack(), 1, v=16000.5),
     "must be an integer"),
    ("audio duration lies", AUDIO_TOPIC, with_record(audio_pack(), 4, v=1.0),
     "data holds 0.01 s"),
    ("audio float format", AUDIO_TOPIC, with_record(audio_pack(), 2, vs="f32le"),
     "only 's16le'"),
    ("audio stereo", AUDIO_TOPIC, with_record(audio_pack(), 3, v=2), "only mono"),
    ("audio too long", AUDIO_TOPIC, dump(audio_pack(samples=11 * 8000, rate=8000)),
     "at most 10 s"),
    ("audio 10 MB", AUDIO_TOPIC, b"[" + b"0," * 5_000_000 + b"0]", "limit is 2097152"),
    ("audio missing rate", AUDIO_TOPIC, dump([r for r in audio_pack() if r["n"] != "sample_rate"]),
     "no 'sample_rate' record"),
    ("forecast missing steps", "predictions/pi-1/forecast",
     b'{"node_id":"pi-1","model":"forecast_a","model_version":"1","input_time":1732406400,'
     b'"latency_ms":1,"units":{"time":"s","temperature":"Cel","humidity":"%RH"}}', "lacks steps"),
    ("keyword probabilities do not sum", "predictions/pi-1/keyword",
     KeywordResult("pi-1", "kws_b", "1", T0, 1, 1, "yes", {"yes": 1.0}).encode().replace(
         b'"probabilities":{"yes":1.0}', b'"probabilities":{"yes":0.5}'), "sum to 1"),
    ("keyword stated probability differs", "predictions/pi-1/keyword",
     KeywordResult("pi-1", "kws_b", "1", T0, 1, 1, "yes", {"yes": 1.0}).encode().replace(
         b'"probability":1.0', b'"probability":0.2'), "probability"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_payload_is_rejected_with_a_reason(topic: str, payload: bytes,
                                                     reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_message(topic, payload)
    assert reason in str(caught.value)


def test_there_are_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_constructor_refuses_non_finite_values(bad: float) -> None:
    with pytest.raises(PayloadError, match="finite"):
        ClimateReading("pi-1", T0, 0, bad, 50.0)
