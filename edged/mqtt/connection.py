"""One MQTT connection on the asyncio loop, and its life: connect, back off, reconnect.

paho's network calls run on the event loop (see ``loopio``), plus ``loop_misc`` on a 1 s tick. The one
exception is the blocking TCP connect and TLS handshake inside ``Client.reconnect``: it runs in an
executor while no socket is registered and nothing else touches the client, and the socket is attached
when it returns.

Each successful CONNACK starts a new *generation*. A message may only be acknowledged on the connection
that delivered it: after a reconnect the broker resends what was not acked (persistent session), and a
packet id from an older connection may name a different message now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edged.mqtt.handler import COMPONENT, RESULTS_COMPONENT, ConnectionHandler, Received
from edged.mqtt.loopio import LoopSocket
from edged.mqtt.options import describe_error, new_properties, tls_context
from edged.retry import Backoff, jittered
from edged.secrets import SecretError, read_secret
from edged.settings import MqttSettings
from edged.status import Components, State

__all__ = ["COMPONENT", "RESULTS_COMPONENT", "MqttConnection"]

log = logging.getLogger(__name__)

#: How often keepalive and timeouts are checked (paho's loop_misc).
TICK_SECONDS = 1.0
#: How long the birth/offline status and the DISCONNECT may take at shutdown.
CLOSE_SECONDS = 2.0


class MqttConnection:
    """One paho client on the running loop; ``run()`` is its connection loop.

    edged opens two: the *ingest* connection (``ingest=True``: persistent session, subscriptions,
    manual acks, Receive Maximum, the retained ``{prefix}/status`` birth and last will) and the
    *results* connection (a clean session that only publishes). Results get their own TCP stream
    because a broker writes PUBACKs behind whatever frames it already queued for the connection: on
    one connection, during a backlog, the acknowledgements of results would wait for the whole backlog.
    """

    def __init__(self, settings: MqttSettings, client_id: str, handler: ConnectionHandler,
                 components: Components, *, ingest: bool = True) -> None:
        self._settings = settings
        self._handler = handler
        self._components = components
        self._ingest = ingest
        self._component = COMPONENT if ingest else RESULTS_COMPONENT
        self._where = f"{settings.host}:{settings.port}"
        self.v5 = settings.protocol == "5"
        self.status_topic = f"{settings.prefix}/status" if ingest else None
        self.generation = 0
        self.connected = False
        #: The broker's Receive Maximum: how many of our QoS 1 publishes it takes unacknowledged.
        self.server_receive_maximum = 65535
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._close_mid: int | None = None
        self._close_acked = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-mqtt-connect")
        self._connecting: Future[MQTTErrorCode] | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost = asyncio.Event()
        protocol = MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
            clean_session=None if self.v5 else not ingest, manual_ack=True, reconnect_on_failure=False,
        )
        self.client.enable_logger(logging.getLogger("edged.mqtt.paho"))
        self.io = LoopSocket(self.client, self._lost.set)
        if settings.tls is not None:
            self.client.tls_set_context(tls_context(settings.tls))
            self.client.tls_insecure_set(settings.tls.insecure)
        if self.status_topic is not None:
            self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        # paho does not read the broker's Receive Maximum; the publisher stays within it and within this.
        self.client.max_inflight_messages_set(settings.max_publish_inflight + 1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def _state(self, state: State, detail: str) -> None:
        self._components.set(self._component, state, detail)

    # -- the connection loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with jittered exponential backoff; slowly when refused."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        s = self._settings
        backoff = Backoff(s.reconnect_min_delay, s.reconnect_max_delay)
        while True:
            try:
                await self._open()
            except SecretError as exc:
                await self._hold_off(f"{exc}")
                continue
            except (OSError, ValueError) as exc:
                # The detail stays the same while the cause does, so an outage is logged once.
                self._state("disconnected", f"cannot connect to {self._where}: {describe_error(exc)}")
            else:
                reason = await self._session()
                if reason is None:
                    self._state("disconnected", f"no CONNACK from {self._where}")
                elif reason.is_failure:
                    await self._hold_off(f"connection refused by {self._where}: {reason}")
                    continue
                else:
                    backoff.reset()  # we were connected: start the backoff over
            delay = backoff.next()
            log.debug("reconnecting to %s in %.2fs", self._where, delay)
            await asyncio.sleep(delay)

    async def _hold_off(self, detail: str) -> None:
        """Bad credentials or a banned client id will not fix themselves quickly: retry slowly."""
        self._state("error", detail)
        delay = jittered(self._settings.refused_retry_delay)
        log.warning("retrying the connection to %s in %.0fs", self._where, delay)
        await asyncio.sleep(delay)

    async def _open(self) -> None:
        """TCP connect, TLS handshake and CONNECT in an executor, then attach the socket to the loop."""
        loop = asyncio.get_running_loop()
        s = self._settings
        if s.username is not None:
            # Read on every attempt: a fixed password file needs no restart.
            password = read_secret("mqtt.password_file", s.password_file) if s.password_file else None
            self.client.username_pw_set(s.username, password)
        self._lost.clear()
        self._connack = loop.create_future()
        if self.v5 and self._ingest:
            # A persistent session: clean_start false AND an expiry, or the broker keeps nothing.
            props = new_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry
            props.ReceiveMaximum = s.max_inflight
            self.client.connect_async(s.host, s.port, s.keepalive, clean_start=False, properties=props)
        elif self.v5:
            # Unacknowledged results are published again from the store: nothing to keep at the broker.
            self.client.connect_async(s.host, s.port, s.keepalive, clean_start=True)
        else:
            self.client.connect_async(s.host, s.port, s.keepalive)  # clean_session: see __init__
        # No socket callbacks while the executor owns the client: paho then writes CONNECT itself.
        self._connecting = self._executor.submit(self.client.reconnect)
        rc = await asyncio.wrap_future(self._connecting)
        sock = self.client.socket()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
            if sock is not None:
                sock.close()
            raise ConnectionError(paho.error_string(rc))
        self.io.attach(sock)  # type: ignore[arg-type]

    async def _session(self) -> ReasonCode | None:
        """Wait for the CONNACK, then tick until the connection is lost. None: no CONNACK came."""
        assert self._connack is not None
        deadline = time.monotonic() + self._settings.keepalive
        reason: ReasonCode | None = None
        while not self._lost.is_set():
            if reason is None and self._connack.done():
                reason = self._connack.result()
            if reason is None and time.monotonic() > deadline:
                log.warning("no CONNACK from %s within %ss: dropping the connection", self._where,
                            self._settings.keepalive)
                self._drop()
                break
            try:
                async with asyncio.timeout(TICK_SECONDS):
                    await self._lost.wait()
            except TimeoutError:
                if self.io.sock is not None:
                    self.client.loop_misc()
        if reason is None and self._connack.done():
            reason = self._connack.result()
        return reason

    def _drop(self) -> None:
        self.io.close()
        self._lost.set()

    # -- paho callbacks (loop thread, inside loop_read/loop_write) -----------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)
        if reason.is_failure:
            return
        self.generation += 1
        self.connected = True
        self.server_receive_maximum = int(getattr(properties, "ReceiveMaximum", 65535))
        if self.status_topic is not None:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        session = "resumed" if flags.session_present else "new"
        self._state("connected", f"{self._where}, MQTT {self._settings.protocol}, {session} session")
        self._handler.on_connected(self.generation, flags.session_present)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        if threading.get_ident() != self._loop_thread:
            # paho reports a failed CONNECT write from inside reconnect() in the executor.
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._lost.set)
            return
        self._lost.set()
        if not self.connected:
            return
        self.connected = False
        # Publishes not yet acknowledged are sent again from the store after reconnecting (new packet ids).
        client.drop_out_messages()
        why = f": {reason}" if flags.is_disconnect_packet_from_server else ""
        self._state("disconnected", f"connection to {self._where} lost{why}")
        self._handler.on_disconnected()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("ignoring a message whose topic is not UTF-8 (acked)")
            self.ack(message.mid, message.qos, self.generation)
            return
        self._handler.on_message(Received(
            topic=topic, payload=bytes(message.payload), qos=message.qos, mid=message.mid,
            retain=bool(message.retain), properties=getattr(message, "properties", None),
            generation=self.generation, received_at=time.time(),
        ))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        if mid == self._close_mid:
            self._close_acked.set()
            return
        self._handler.on_published(mid, not reason.is_failure, str(reason))

    # -- what the connection's user calls ------------------------------------------------------------------

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message on the connection that delivered it; False when that connection is gone."""
        if qos == 0:
            return True
        if not self.connected or generation != self.generation:
            return False
        return self.client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        if not filters or not self.connected:
            return
        if self.v5:
            # retainHandling 1: a resumed subscription does not replay retained frames.
            self.client.subscribe([(topic, SubscribeOptions(qos=qos, retainHandling=1)) for topic, qos in filters])
        else:
            self.client.subscribe(filters)

    def unsubscribe(self, topics: list[str]) -> None:
        if topics and self.connected:
            self.client.unsubscribe(topics)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> int | None:
        """Publish on the current connection; the mid, or None when not connected."""
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    async def close(self) -> None:
        """Publish the retained ``offline`` status, disconnect cleanly, release the socket (bounded)."""
        if self.connected:
            if self.status_topic is not None:
                self._close_mid = self.publish(self.status_topic, b"offline", qos=1, retain=True)
                try:
                    async with asyncio.timeout(CLOSE_SECONDS):
                        await self._close_acked.wait()
                except TimeoutError:
                    log.warning("the broker did not acknowledge the offline status in time")
            self.connected = False
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self.io.detached.wait()
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            # Stopped while a connect is under way in the executor: give it a moment to end, so its
            # socket is closed here (else it ends within paho's connect timeout and is left to the GC).
            with contextlib.suppress(OSError, ValueError, TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await asyncio.shield(asyncio.wrap_future(connecting))
        self._drop()
        leftover = self.client.socket()
        if leftover is not None:
            leftover.close()
        self._executor.shutdown(wait=False)
        self._state("disconnected", "stopped")
