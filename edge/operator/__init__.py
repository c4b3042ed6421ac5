"""The operator side: the event store (issue 13 adds PostgreSQL, shared-subscription consumers and the review
console; issue 12 the fleet). Never imports `edge.device`."""
