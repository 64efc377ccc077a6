"""The routing table of MQTT ingest: each subscription as a Route, which route a topic takes, and the camera
a frame comes from (a topic level, else an MQTT 5 user property)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edged.settings import Subscription

if TYPE_CHECKING:  # paho is imported only once MQTT runs: with [mqtt] enabled = false a start never does
    from paho.mqtt.properties import Properties

__all__ = ["MAX_CAMERA_CHARS", "UNKNOWN_CAMERA", "Route", "camera_of", "rates", "route_for", "routes"]

UNKNOWN_CAMERA = "unknown"
MAX_CAMERA_CHARS = 128


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription, ready to match topics."""

    filter: str
    functions: tuple[str, ...]
    qos: int
    match: str
    camera_level: int | None
    max_fps: float | None = None


def routes(subscriptions: Sequence[Subscription]) -> list[Route]:
    out = []
    for sub in subscriptions:
        match = sub.topic
        if match.startswith("$share/"):
            match = match.split("/", 2)[2]  # shared subscriptions deliver plain topics
        levels = match.split("/")
        camera_level = levels.index("+") if "+" in levels else None
        out.append(Route(sub.topic, sub.functions, min(sub.qos, 1), match, camera_level, sub.max_fps))
    return out


def rates(table: Sequence[Route]) -> dict[str, float]:
    # reversed: of two routes with one filter, the first is the one matched (route_for)
    return {r.filter: r.max_fps for r in reversed(table) if r.max_fps is not None}


def route_for(table: Sequence[Route], topic: str) -> Route | None:
    from paho.mqtt.client import topic_matches_sub  # already imported by the connection that got the topic

    for route in table:
        if topic_matches_sub(route.match, topic):
            return route
    return None


def _clean_camera(value: str) -> str:
    # The id becomes a topic level of the results: no separators or wildcards in it.
    cleaned = "".join("_" if ch in "/+#\0" else ch for ch in value.strip())[:MAX_CAMERA_CHARS]
    return cleaned or UNKNOWN_CAMERA


def camera_of(route: Route, topic: str, properties: Properties | None) -> str:
    """The topic level under the filter's first '+', else the MQTT 5 user property ``camera``."""
    if route.camera_level is not None:
        levels = topic.split("/")
        if route.camera_level < len(levels) and levels[route.camera_level]:
            return _clean_camera(levels[route.camera_level])
    for key, value in getattr(properties, "UserProperty", None) or ():
        if key == "camera":
            return _clean_camera(value)
    return UNKNOWN_CAMERA
