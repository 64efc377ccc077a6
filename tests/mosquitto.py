"""A real mosquitto for the tests: its own config and directory, a free loopback port, restartable.

``Mosquitto(tmp_path / "broker").start()`` runs Debian's ``/usr/sbin/mosquitto`` on 127.0.0.1 with
persistence in its directory, so a restart (SIGTERM, which saves the sessions) keeps queued messages.
Optional TLS (certificates made with the ``openssl`` CLI by ``make_tls``) and a password file (made
with ``mosquitto_passwd``). ``Peer`` is a plain paho client on its own thread that plays a camera or a
result consumer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

# Re-exported: test_mqtt.py imports wait_until from here.
from tests.waiting import wait_until

__all__ = ["MOSQUITTO", "Mosquitto", "Peer", "TlsFiles", "free_port", "make_tls", "wait_until"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_SECONDS = 10.0
STOP_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls(directory: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=edged test CA", cwd=directory)
    exts = (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth"))
    for name, ext in exts:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=edged test {name}",
                 cwd=directory)
        (directory / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                    directory / "client.crt", directory / "client.key")


class Mosquitto:
    """One broker process; ``start``/``stop``/``restart`` keep the port, the config and the saved sessions."""

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None,
                 users: dict[str, str] | None = None, extra_config: str = "") -> None:
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.users = users
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "mosquitto.log"

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            # As root mosquitto would drop to the `mosquitto` user, which cannot read a pytest tmp_path.
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1",
            f"persistence true\npersistence_location {self.directory}/",
            "autosave_interval 1",
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information",
            "log_type subscribe",  # wait_subscribed
            # Defaults of 1000 queued messages per client would drop frames in the burst tests.
            "max_queued_messages 100000\nmax_inflight_messages 20",
        ]
        if self.users is not None:
            pw = self.directory / "passwd"
            pw.unlink(missing_ok=True)
            for i, (user, password) in enumerate(self.users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                subprocess.run(["mosquitto_passwd", *flags, str(pw), user, password], check=True,
                               capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}",
                      "require_certificate true", "tls_version tlsv1.2"]
        lines.append(self.extra_config)
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(line for line in lines if line) + "\n")
        return path

    def start(self) -> Mosquitto:
        assert self.proc is None, "already running"
        config = self._write_config()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=log)
        try:
            wait_until(self._listening, START_SECONDS, f"mosquitto to listen on {self.port}", interval=0.01)
        except AssertionError:
            self.stop(kill=True)
            raise RuntimeError(f"mosquitto did not listen on {self.port}") from None
        return self

    def _listening(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"mosquitto exited at start; log:\n{self.log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its sessions) or SIGKILL; bounded either way."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_SECONDS)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_subscribed(self, client_id: str, topic: str, timeout: float = 60.0) -> None:
        """Wait until the broker has logged ``client_id``'s SUBSCRIBE to ``topic`` (log_type subscribe).

        A client logs "connected" before its SUBSCRIBE reaches the broker: a frame published in between
        matches nothing and is dropped."""
        line = re.compile(rf"^\d+: {re.escape(client_id)} \d {re.escape(topic)}$", re.MULTILINE)
        wait_until(lambda: line.search(self.log_path.read_text(errors="replace")) is not None, timeout,
                   f"{client_id} subscribed to {topic}")

    def __enter__(self) -> Mosquitto:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Peer:
    """A paho client on its own network thread: publishes frames, collects what it receives.

    ``publish`` waits for the PUBACK (bounded). ``messages`` holds every PUBLISH received, in order.
    """

    def __init__(self, broker: Mosquitto, client_id: str, *, protocol: int = mqtt.MQTTv5,
                 username: str | None = None, password: str | None = None,
                 subscribe: tuple[str, ...] = (), clean: bool = True) -> None:
        self.broker = broker
        self.protocol = protocol
        self.clean = clean
        self.subscribe = subscribe
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        kwargs: dict[str, Any] = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.tls is not None:
            ctx = ssl.create_default_context(cafile=str(broker.tls.ca))
            ctx.load_cert_chain(str(broker.tls.client_cert), str(broker.tls.client_key))
            self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self._acked: set[int] = set()
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # paho accepts floats

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        for topic in self.subscribe:
            client.subscribe(topic, qos=1)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acked.add(mid)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def start(self, timeout: float = 10.0) -> Peer:
        props = None
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = self.clean
            if not self.clean:
                props = Properties(mqtt.PacketTypes.CONNECT)
                props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", self.broker.port, keepalive=10, properties=props, **kwargs)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise AssertionError(f"peer could not connect to 127.0.0.1:{self.broker.port}")
        return self

    def wait_connected(self, timeout: float = 20.0) -> None:
        if not self._connected.wait(timeout):
            raise AssertionError("peer is not connected")

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, properties: Properties | None = None,
                timeout: float = 30.0) -> None:
        """Publish and wait (bounded) for the broker's PUBACK; paho resends it itself across reconnects."""
        self.wait_connected(timeout)
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if qos == 0:
            return
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise AssertionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        wait_until(lambda: info.mid in self._acked, timeout, f"PUBACK of a publish to {topic}")

    def received(self, prefix: str = "") -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def wait_for(self, predicate: Callable[[list[mqtt.MQTTMessage]], bool], timeout: float, what: str) -> None:
        wait_until(lambda: predicate(self.received()), timeout, what)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

