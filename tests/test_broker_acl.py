"""The committed broker config (firmware-config/mosquitto/) against a real mosquitto, through
edge.messaging.mqtt.MqttClient.

Each device reads and writes only its own subtree, the operator reads every device's events, status and watchlist
state and writes acks and watchlists, identities come from client certificates of our CA only, and a device cannot
use another device's client id to disconnect it.

With MQTT 3.1.1 a denied publish is acknowledged (PUBACK) and dropped, and a denied message is not delivered, so
the negative checks here are "nothing arrives". To keep them fast and free of races, every negative is followed by
an allowed message on the same path (a sentinel): messages between one pair of clients arrive in order, so once
the sentinel is in, anything forbidden would already be there too.
"""

from __future__ import annotations

import queue
import re
import time

import pytest

from edge.messaging.mqtt import Message, MqttClient, MqttError

CONNECT_TIMEOUT = 3.0  # s, for connections that must succeed
REFUSE_TIMEOUT = 1.5  # s, for connections that must not
QUIET = 0.3  # s of extra listening after a sentinel


@pytest.fixture
def connect(broker):
    """connect(name, subscriptions, **settings) -> a connected MqttClient whose subscriptions are in place."""
    clients: list[MqttClient] = []

    def _connect(name: str, subscriptions: tuple[str, ...] | list[str] = (), **kw) -> MqttClient:
        client = MqttClient(broker.client_settings(name, **kw), [(topic, 1) for topic in subscriptions])
        clients.append(client)
        client.start()
        client.wait_connected(CONNECT_TIMEOUT)
        sync(client)
        return client

    yield _connect
    for client in clients:
        client.stop()


def sync(client: MqttClient, timeout: float = CONNECT_TIMEOUT) -> None:
    """Return once the broker has processed everything this client sent before (its SUBSCRIBEs included).

    The broker handles one connection's packets in order, so the PUBACK of a later publish proves it. The topic is
    in no ACL: the publish is acknowledged and dropped.
    """
    mid = client.publish("edge/sync", b"", qos=1)
    assert mid is not None, "client disconnected"
    deadline = time.monotonic() + timeout
    while not client.acked(mid):
        assert time.monotonic() < deadline, "the broker did not acknowledge a publish"
        time.sleep(0.005)


def publish(client: MqttClient, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish at QoS 1 and wait for the broker's PUBACK (which it sends for denied publishes too)."""
    mid = client.publish(topic, payload, qos=1, retain=retain)
    assert mid is not None, f"client disconnected before publishing to {topic}"
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while not client.acked(mid):
        assert time.monotonic() < deadline, f"no PUBACK for {topic}"
        time.sleep(0.005)


def received_until(client: MqttClient, topic: str, payload: bytes, timeout: float = CONNECT_TIMEOUT) -> list[Message]:
    """Everything `client` receives up to and including (topic, payload), plus QUIET seconds more."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not any(m.topic == topic and m.payload == payload for m in got):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"{client.settings.client_id} did not receive {topic} {payload!r}; got "
                        f"{[(m.topic, m.payload) for m in got]}")
        try:
            got.append(client.inbox.get(timeout=remaining))
        except queue.Empty:
            pass
    time.sleep(QUIET)
    while not client.inbox.empty():
        got.append(client.inbox.get_nowait())
    return got


def pairs(messages: list[Message]) -> set[tuple[str, bytes]]:
    return {(m.topic, m.payload) for m in messages}


# --- devices write only their own topics -------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["events", "status", "watchlist/state"])
def test_device_publishes_as_itself_only(connect, suffix):
    operator = connect("operator", ["edge/+/events", "edge/+/status", "edge/+/watchlist/state"])
    cam_a = connect("cam-a")

    publish(cam_a, f"edge/cam-b/{suffix}", b"forged by cam-a")
    publish(cam_a, f"edge/cam-a/{suffix}", b"from cam-a")

    got = pairs(received_until(operator, f"edge/cam-a/{suffix}", b"from cam-a"))
    assert got == {(f"edge/cam-a/{suffix}", b"from cam-a")}


def test_device_cannot_write_its_own_read_topics(connect):
    """A device must not forge its own watchlist or acks (only the operator publishes those)."""
    cam_a = connect("cam-a", ["edge/cam-a/watchlist/#", "edge/cam-a/events/ack"])
    operator = connect("operator")

    publish(cam_a, "edge/cam-a/watchlist/manifest", b"forged manifest")
    publish(cam_a, "edge/cam-a/events/ack", b"forged ack")
    publish(operator, "edge/cam-a/watchlist/manifest", b"real manifest")

    got = pairs(received_until(cam_a, "edge/cam-a/watchlist/manifest", b"real manifest"))
    assert got == {("edge/cam-a/watchlist/manifest", b"real manifest")}


# --- devices read only their own topics --------------------------------------------------------------------------
def test_device_reads_only_its_own_subtree(connect):
    cam_a = connect("cam-a", ["edge/cam-b/events", "edge/cam-b/events/ack", "edge/cam-b/watchlist/#",
                              "edge/cam-b/status", "edge/cam-a/events/ack", "edge/cam-a/watchlist/#"])
    cam_b = connect("cam-b", ["edge/cam-b/events/ack", "edge/cam-b/watchlist/#"])
    operator = connect("operator", ["edge/+/events"])

    publish(cam_b, "edge/cam-b/events", b"cam-b event")
    publish(cam_b, "edge/cam-b/status", b"online")
    publish(operator, "edge/cam-b/watchlist/manifest", b"manifest for cam-b")
    publish(operator, "edge/cam-b/watchlist/chunk/7/0", b"chunk for cam-b")
    publish(operator, "edge/cam-b/events/ack", b"ack for cam-b")
    publish(operator, "edge/cam-a/events/ack", b"ack for cam-a")
    publish(operator, "edge/cam-a/watchlist/chunk/7/0", b"chunk for cam-a")

    # cam-b got its messages, so the operator's writes were delivered; cam-a saw only its own.
    assert pairs(received_until(cam_b, "edge/cam-b/events/ack", b"ack for cam-b")) == {
        ("edge/cam-b/watchlist/manifest", b"manifest for cam-b"),
        ("edge/cam-b/watchlist/chunk/7/0", b"chunk for cam-b"),
        ("edge/cam-b/events/ack", b"ack for cam-b"),
    }
    assert pairs(received_until(cam_a, "edge/cam-a/watchlist/chunk/7/0", b"chunk for cam-a")) == {
        ("edge/cam-a/events/ack", b"ack for cam-a"),
        ("edge/cam-a/watchlist/chunk/7/0", b"chunk for cam-a"),
    }
    assert ("edge/cam-b/events", b"cam-b event") in pairs(received_until(operator, "edge/cam-b/events",
                                                                         b"cam-b event"))


def test_device_wildcard_subscription_is_filtered_per_message(connect):
    cam_a = connect("cam-a", ["#"])
    operator = connect("operator")

    publish(operator, "edge/cam-b/watchlist/manifest", b"manifest for cam-b")
    publish(operator, "edge/cam-a/watchlist/manifest", b"manifest for cam-a")

    got = pairs(received_until(cam_a, "edge/cam-a/watchlist/manifest", b"manifest for cam-a"))
    assert got == {("edge/cam-a/watchlist/manifest", b"manifest for cam-a")}


# --- identities: client id, username, certificates ---------------------------------------------------------------
@pytest.mark.parametrize("impostor", [{"client_id": "cam-b"}, {"client_id": "cam-b", "username": "cam-b"}],
                         ids=["client_id", "client_id+username"])
@pytest.mark.slow
def test_device_cannot_take_over_another_devices_session(broker, connect, impostor):
    """use_username_as_clientid: cam-a connecting as client id "cam-b" gets the id "cam-a" (its CN); without the
    option mosquitto would close cam-b's connection and the two would keep kicking each other off."""
    cam_b = connect("cam-b", ["edge/cam-b/watchlist/#"])
    # (no quick reconnect: it would take its session back from the real cam-a below)
    fake = connect("cam-a", ["edge/cam-b/watchlist/#", "edge/cam-a/watchlist/#"], reconnect_min=30, reconnect_max=30,
                   **impostor)
    operator = connect("operator")

    assert re.search(r"New client connected from \S+ as cam-a \(.*u'cam-a'\)", broker.log())
    publish(operator, "edge/cam-b/watchlist/manifest", b"manifest for cam-b")
    publish(operator, "edge/cam-a/watchlist/manifest", b"manifest for cam-a")
    assert pairs(received_until(cam_b, "edge/cam-b/watchlist/manifest", b"manifest for cam-b")) == {
        ("edge/cam-b/watchlist/manifest", b"manifest for cam-b")}
    assert pairs(received_until(fake, "edge/cam-a/watchlist/manifest", b"manifest for cam-a")) == {
        ("edge/cam-a/watchlist/manifest", b"manifest for cam-a")}
    assert cam_b.connected and cam_b.stats.disconnects == 0 and cam_b.stats.connects == 1

    # The impostor's session is cam-a's: the real cam-a connecting replaces it, cam-b is untouched.
    connect("cam-a")
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while fake.stats.disconnects == 0:
        assert time.monotonic() < deadline, "the real cam-a did not replace the impostor's session"
        time.sleep(0.01)
    fake.stop()
    assert "Client cam-a already connected, closing old connection." in broker.log()
    assert "Client cam-b already connected" not in broker.log()
    assert cam_b.connected and cam_b.stats.disconnects == 0


def test_same_device_reconnecting_replaces_its_old_connection(broker, connect):
    """The flip side of client id = CN: a second connection with the same certificate takes over the session."""
    first = connect("cam-a")
    connect("cam-a", client_id="anything")
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while first.stats.disconnects == 0:
        assert time.monotonic() < deadline, "the old connection of cam-a was not closed"
        time.sleep(0.01)
    first.stop()
    assert "Client cam-a already connected, closing old connection." in broker.log()


@pytest.mark.parametrize(("name", "broker_says"), [
    ("rogue", "certificate verify failed"),  # a certificate for CN cam-a from another CA
    (None, "peer did not return a certificate"),
])
@pytest.mark.slow
def test_connection_without_a_certificate_of_our_ca_is_refused(broker, name, broker_says):
    client = MqttClient(broker.client_settings(name))
    client.start()
    try:
        with pytest.raises(MqttError) as err:
            client.wait_connected(REFUSE_TIMEOUT)
    finally:
        client.stop()
    # The TLS alert reaches paho only as a dropped connection: the client's message says what that means, the
    # broker's log names the exact reason.
    assert str(err.value) == (f"no connection to 127.0.0.1:{broker.port} within 1.5 s: the broker closed the connection"
                              " before accepting it (client certificate refused, or not from the broker's CA?)")
    assert client.stats.connects == 0
    assert broker_says in broker.log()


def test_mqtt_username_does_not_change_the_identity(connect):
    """use_identity_as_username: the certificate's CN is the identity, a CONNECT username is ignored."""
    operator = connect("operator", ["edge/+/events"])
    cam_a = connect("cam-a", username="operator", password="x")

    publish(cam_a, "edge/cam-b/events/ack", b"ack as operator?")
    publish(cam_a, "edge/cam-a/events", b"sentinel")
    got = pairs(received_until(operator, "edge/cam-a/events", b"sentinel"))
    assert got == {("edge/cam-a/events", b"sentinel")}


# --- the operator ------------------------------------------------------------------------------------------------
def test_operator_reads_every_device_and_writes_their_acks_and_watchlists(connect):
    operator = connect("operator", ["edge/+/events", "edge/+/status", "edge/+/watchlist/state"])
    devices = {name: connect(name, [f"edge/{name}/events/ack", f"edge/{name}/watchlist/#"])
               for name in ("cam-a", "cam-b")}

    for name, device in devices.items():
        publish(device, f"edge/{name}/events", b'{"seq": 1}')
        publish(device, f"edge/{name}/status", b"online", retain=True)
        publish(device, f"edge/{name}/watchlist/state", b"installed 7")
    expected = {(f"edge/{name}/{suffix}", payload) for name in devices
                for suffix, payload in [("events", b'{"seq": 1}'), ("status", b"online"),
                                        ("watchlist/state", b"installed 7")]}
    assert pairs(received_until(operator, "edge/cam-b/watchlist/state", b"installed 7")) == expected

    for name, device in devices.items():
        publish(operator, f"edge/{name}/events/ack", b"1")
        publish(operator, f"edge/{name}/watchlist/chunk/7/0", b"chunk 0")
        publish(operator, f"edge/{name}/watchlist/manifest", b"manifest 7", retain=True)
        assert pairs(received_until(device, f"edge/{name}/watchlist/manifest", b"manifest 7")) == {
            (f"edge/{name}/events/ack", b"1"), (f"edge/{name}/watchlist/chunk/7/0", b"chunk 0"),
            (f"edge/{name}/watchlist/manifest", b"manifest 7")}


def test_operator_cannot_forge_device_reports(connect):
    operator = connect("operator", ["edge/+/events", "edge/+/watchlist/state"])
    cam_a = connect("cam-a", ["edge/cam-a/watchlist/#"])

    publish(operator, "edge/cam-a/events", b"forged event")
    publish(operator, "edge/cam-a/watchlist/state", b"forged state")
    publish(operator, "edge/cam-a/watchlist/manifest", b"manifest")
    publish(cam_a, "edge/cam-a/events", b"sentinel")

    assert pairs(received_until(cam_a, "edge/cam-a/watchlist/manifest", b"manifest")) == {
        ("edge/cam-a/watchlist/manifest", b"manifest")}
    assert pairs(received_until(operator, "edge/cam-a/events", b"sentinel")) == {("edge/cam-a/events", b"sentinel")}


# --- limits and the fixture itself -------------------------------------------------------------------------------
def test_watchlist_chunk_size_limit(connect):
    """message_size_limit is 2 MiB: 1 MiB chunks pass, an oversized publish is acknowledged and dropped."""
    cam_a = connect("cam-a", ["edge/cam-a/watchlist/#"])
    operator = connect("operator")
    chunk = bytes(range(256)) * 4096  # 1 MiB

    publish(operator, "edge/cam-a/watchlist/chunk/7/0", chunk)
    publish(operator, "edge/cam-a/watchlist/chunk/7/1", b"x" * (2 * 1024 * 1024 + 1))
    publish(operator, "edge/cam-a/watchlist/manifest", b"sentinel")

    got = received_until(cam_a, "edge/cam-a/watchlist/manifest", b"sentinel")
    assert [(m.topic, len(m.payload)) for m in got] == [("edge/cam-a/watchlist/chunk/7/0", len(chunk)),
                                                        ("edge/cam-a/watchlist/manifest", 8)]
    assert got[0].payload == chunk


def test_broker_restarts_on_the_same_port_with_its_persistence(broker, connect):
    cam_a = connect("cam-a")
    publish(cam_a, "edge/cam-a/status", b"online", retain=True)
    port = broker.port

    broker.stop()  # SIGTERM saves the database; kill() would lose what came since the last autosave
    assert not broker.running
    broker.start()
    assert broker.port == port
    cam_a.wait_connected(CONNECT_TIMEOUT)  # paho reconnects by itself

    operator = connect("operator", ["edge/+/status"])
    got = received_until(operator, "edge/cam-a/status", b"online")
    assert [(m.topic, m.payload, m.retained) for m in got] == [("edge/cam-a/status", b"online", True)]

    broker.kill()
    assert not broker.running
    broker.start()
    operator.wait_connected(CONNECT_TIMEOUT)
