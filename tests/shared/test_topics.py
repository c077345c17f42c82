"""The topic scheme round-trips and rejects what is not part of it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.shared.topics import (
    Channel,
    DeviceTopic,
    TopicError,
    device_filter,
    device_topic,
    parse_topic,
    shared_filter,
)

device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z")


@given(device_id=device_ids, channel=st.sampled_from(list(Channel)))
def test_device_topic_round_trips(device_id: str, channel: Channel) -> None:
    assert parse_topic(device_topic(device_id, channel)) == DeviceTopic(device_id, channel)


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v1/devices/d1",
        "edgefleet/v2/devices/d1/state",
        "edgefleet/v1/devices/d1/unknown",
        "edgefleet/v1/devices/+/state",
        "edgefleet/v1/devices/../state",
        "other/v1/devices/d1/state",
        "edgefleet/v1/devices/d1/state/extra",
    ],
)
def test_topics_outside_the_scheme_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize("bad_id", ["", "a/b", "+", "#", "-lead", "x" * 129, "sp ace"])
def test_unsafe_device_ids_cannot_build_topics(bad_id: str) -> None:
    with pytest.raises(TopicError, match="device id"):
        device_topic(bad_id, Channel.STATE)


def test_filters() -> None:
    assert device_filter(Channel.TELEMETRY) == "edgefleet/v1/devices/+/telemetry"
    assert device_filter() == "edgefleet/v1/devices/+/+"
    assert (
        shared_filter("edgefleet", device_filter()) == "$share/edgefleet/edgefleet/v1/devices/+/+"
    )
