"""What travels between device and operator: the MQTT client (the only paho importer), the topic tree, the payload
schemas, the device's durable outbox, event delivery and watchlist sync (both ends of each protocol)."""
