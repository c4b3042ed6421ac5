"""MQTT transport: the only module that imports paho-mqtt.

paho 2.x with `CallbackAPIVersion.VERSION2`, `connect_async` + `loop_start` (its network thread reconnects with
backoff), TLS with client certificates, a retained last will. All callbacks run on paho's network thread, so they
only record state and enqueue: `on_message` puts (topic, payload, retained) into a bounded inbox and counts what it
has to drop. A CONNACK that refuses is an error carrying the broker's reason, never "connected".

paho's own in-flight queue is not durable (a restart loses QoS 1 messages), so `publish` refuses while
disconnected and the caller's outbox keeps the message until the consumer acknowledges it.

paho retries a failed connection forever and tells only *that* it failed. A long-running caller must tell a broker
that is away (retry) from a configuration the broker will never accept (stop and say so), so each failed attempt is
counted (`stats.connect_failures`) with its cause in `stats.last_error`, and `fatal` names a refusal that retrying
cannot cure: the broker's certificate not trusted, our certificate refused by a TLS alert, a CONNACK refusal other
than "server unavailable/busy".
"""

from __future__ import annotations

import queue
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError


class MqttError(EdgeError):
    """The broker refused us, or could not be reached, or a call was made in the wrong state."""


#: CONNACK refusals that mean "later", not "never".
_BUSY = frozenset({"Server unavailable", "Server busy", "Connection rate exceeded", "Quota exceeded"})
#: TLS errors that are a connection cut short (broker restarting), not a refusal.
_SSL_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker.

    host/port: broker address (8883 is MQTT over TLS). client_id: unique per device (the broker's ACLs key on the
    certificate's CN). ca_file/cert_file/key_file: TLS trust anchor and client certificate (PEM); None = no TLS.
    keepalive: seconds. reconnect_min/max: backoff bounds in seconds. will_topic/will_payload: published (retained)
    by the broker if we vanish. inbox_size: bounded queue of received messages.
    """

    host: str = "localhost"
    port: int = 8883
    client_id: str = "edge"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    will_topic: str | None = None
    will_payload: bytes = b""
    inbox_size: int = 1000
    clean_session: bool = True


@dataclass(frozen=True)
class Message:
    """A received message (copied out of paho's thread)."""

    topic: str
    payload: bytes
    retained: bool


@dataclass
class MqttStats:
    """Counters kept by the network thread (read them for health reports)."""

    connects: int = 0
    disconnects: int = 0
    refusals: int = 0
    connect_failures: int = 0  # attempts that ended before a CONNACK accepted them (any cause)
    received: int = 0
    inbox_dropped: int = 0
    published: int = 0
    acked: int = 0
    last_error: str | None = None


class MqttClient:
    """One broker connection. `subscriptions` are (topic filter, qos) renewed on every (re)connect."""

    def __init__(self, settings: MqttSettings, subscriptions: list[tuple[str, int]] | None = None) -> None:
        import paho.mqtt.client as paho

        self.settings = settings
        self.subscriptions = list(subscriptions or [])
        self.inbox: queue.Queue[Message] = queue.Queue(maxsize=settings.inbox_size)
        self.stats = MqttStats()
        self._connected = threading.Event()
        self._refused = threading.Event()
        self._fatal: str | None = None  # why the broker will never accept this configuration (see `fatal`)
        self._alert: str | None = None  # a TLS alert received before the CONNACK (our certificate refused)
        self._acks: set[int] = set()
        self._ack_lock = threading.Lock()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                                   clean_session=settings.clean_session, protocol=paho.MQTTv311)
        if settings.ca_file:
            try:
                self._client.tls_set(ca_certs=str(settings.ca_file),
                                     certfile=str(settings.cert_file) if settings.cert_file else None,
                                     keyfile=str(settings.key_file) if settings.key_file else None)
            except (OSError, ValueError) as err:
                raise MqttError(f"TLS files for the broker cannot be used ({err}): check ca_file, cert_file,"
                                " key_file") from None
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.will_topic:
            self._client.will_set(settings.will_topic, settings.will_payload, qos=1, retain=True)
        # paho's annotation says int; it only multiplies and compares them, so sub-second backoff works as seconds
        self._client.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)  # type: ignore[arg-type]
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._log_err = paho.MQTT_LOG_ERR
        self._client.on_log = self._on_log

    # --- paho network thread: record and enqueue only -----------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.stats.refusals += 1
            self.stats.connect_failures += 1
            self.stats.last_error = f"broker refused the connection: {reason_code}"
            self._fatal = None if str(reason_code) in _BUSY else self.stats.last_error
            self._refused.set()
            return
        self.stats.connects += 1
        self.stats.last_error = None
        self._fatal = self._alert = None
        self._refused.clear()
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos)
        self._connected.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its `except OSError`: the exception is the cause it does not pass on.
        err = sys.exc_info()[1]
        self.stats.connect_failures += 1
        self._fatal = None
        if isinstance(err, ssl.SSLCertVerificationError):
            self._fatal = self.stats.last_error = (f"the broker's certificate is not trusted ({err.verify_message}):"
                                                   " check the CA file and the broker's host name")
        elif isinstance(err, ssl.SSLError) and not isinstance(err, _SSL_CUT):
            self._fatal = self.stats.last_error = f"TLS with the broker failed: {err.reason or err}"
        elif isinstance(err, OSError):
            self.stats.last_error = f"cannot connect to the broker: {err.strerror or err}"
        else:
            self.stats.last_error = "cannot connect to the broker (network, TLS handshake or certificate refused)"

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        # A certificate the broker refuses (TLS 1.3: after our side of the handshake) arrives as a TLS alert on the
        # first read, which paho only logs, inside its `except OSError`, before reporting a disconnect.
        if level == self._log_err and not self._connected.is_set():
            err = sys.exc_info()[1]
            if isinstance(err, ssl.SSLError) and not isinstance(err, _SSL_CUT):
                self._alert = f"the broker refused this client's certificate (TLS alert: {err.reason or err})"

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
            if reason_code.is_failure:
                self.stats.last_error = f"disconnected: {reason_code}"
        elif not self._refused.is_set():
            # With TLS 1.3 a refused client certificate surfaces only as the broker hanging up before its CONNACK.
            self.stats.connect_failures += 1
            self.stats.last_error = ("the broker closed the connection before accepting it (client certificate "
                                     "refused, or not from the broker's CA?)")
            self._fatal, self._alert = self._alert, None
        self._connected.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.stats.received += 1
        try:
            self.inbox.put_nowait(Message(message.topic, bytes(message.payload), bool(message.retain)))
        except queue.Full:
            self.stats.inbox_dropped += 1

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self.stats.acked += 1
        with self._ack_lock:
            self._acks.add(mid)

    # --- caller's threads -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (returns at once; paho's thread keeps reconnecting)."""
        try:
            self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        except (OSError, ValueError) as err:
            raise MqttError(f"cannot start connecting to {self.settings.host}:{self.settings.port}: {err}") from None
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> None:
        """Block until connected; MqttError with the broker's reason if it refused or the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected.wait(0.05):
                return
            if self._refused.is_set():
                raise MqttError(self.stats.last_error or "broker refused the connection")
        raise MqttError(f"no connection to {self.settings.host}:{self.settings.port} within {timeout:g} s"
                        + (f": {self.stats.last_error}" if self.stats.last_error else ""))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def fatal(self) -> str | None:
        """Why the last attempt failed, when retrying cannot help (a certificate or authentication refused: the
        configuration must change); None while connected or when the broker is merely away."""
        return self._fatal

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Send if connected; returns the message id (see `acked`) or None when disconnected (nothing queued)."""
        if not self._connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            return None
        self.stats.published += 1
        return int(info.mid)

    def acked(self, mid: int) -> bool:
        """Whether the broker acknowledged (PUBACK) message `mid`; forgets it once reported."""
        with self._ack_lock:
            if mid in self._acks:
                self._acks.discard(mid)
                return True
            return False

    def publish_confirmed(self, messages: list[tuple[str, bytes]], retain: bool = False, connect_timeout: float = 10.0,
                          ack_timeout: float = 60.0) -> None:
        """Publish every (topic, payload) with QoS 1, waiting for a connection when the client has none, then until
        the broker acknowledged them all (EdgeError after `ack_timeout` seconds, naming how many are missing)."""
        pending: list[int] = []
        for topic, payload in messages:
            while (mid := self.publish(topic, payload, qos=1, retain=retain)) is None:
                self.wait_connected(connect_timeout)
            pending.append(mid)
            pending = [m for m in pending if not self.acked(m)]
        deadline = time.monotonic() + ack_timeout
        while pending and time.monotonic() < deadline:
            pending = [m for m in pending if not self.acked(m)]
            time.sleep(0.01)
        if pending:
            raise EdgeError(f"the broker did not acknowledge {len(pending)} of {len(messages)} messages within"
                            f" {ack_timeout:g} s")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription (kept across reconnects)."""
        self.subscriptions.append((topic, qos))
        if self._connected.is_set():
            self._client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (and stop renewing it)."""
        self.subscriptions = [(t, q) for t, q in self.subscriptions if t != topic]
        if self._connected.is_set():
            self._client.unsubscribe(topic)

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()


def probe(settings: MqttSettings, timeout: float = 5.0) -> str:
    """Reach the broker and, with TLS, complete a handshake with the client certificate — without an MQTT session,
    so a running device under the same client id is not displaced (`edge doctor` beside the service). Returns what
    was proven; MqttError naming the cause (unreachable, certificate refused)."""
    import socket
    import ssl

    where = f"{settings.host}:{settings.port}"
    try:
        raw = socket.create_connection((settings.host, settings.port), timeout)
    except OSError as err:
        raise MqttError(f"no connection to {where}: {err.strerror or err}") from None
    with raw:
        if settings.ca_file is None:
            return f"{where} reachable (no TLS)"
        try:
            context = ssl.create_default_context(cafile=str(settings.ca_file))
            if settings.cert_file:
                context.load_cert_chain(str(settings.cert_file), str(settings.key_file) if settings.key_file else None)
            with context.wrap_socket(raw, server_hostname=settings.host) as tls:
                tls.settimeout(0.5)  # a refused client certificate may only show as an alert after the handshake
                try:
                    if tls.recv(1) == b"":
                        raise MqttError(f"{where} refused the client certificate (it closed the connection)")
                except (socket.timeout, TimeoutError):
                    pass  # still open, waiting for our CONNECT: the certificate was accepted
                return f"TLS handshake with {where} accepted ({tls.version()})"
        except ssl.SSLError as err:
            raise MqttError(f"{where} refused the TLS connection: {err.reason or err}") from None
        except OSError as err:
            raise MqttError(f"{where} closed the connection during the TLS handshake: {err.strerror or err}") from None
