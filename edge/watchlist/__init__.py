"""Watchlists: the signed, encrypted bundle an operator sends to a device or group, and the device's install policy.

By side (see DESIGN.md section 5):

- shared formats: `manifest` (the signed manifest's schema), `payload` (the plaintext), `frame` (the bundle's bytes,
  limits and error codes), `wipe` (wipe statements), `delta` (the delta format and its application), `index` (the
  Annoy index bytes: built deterministically, loaded from memory);
- `device/`: `verify` and `unseal` (check and open a bundle), `local` (the device's own bundle of a delta's result),
  `policy` (what may be installed: pure decisions), `store` (the installed bundle on disk and in memory, around the
  policy), `record` (its install record), `matcher` (the live, searchable watchlist);
- `operator/`: `build` (enrollment), `references` (the enrolled chips), `seal` (sealing and signing), `releases`
  (the archive of sealed versions), `diff` (making a delta).

The device side never imports the operator side or OpenCV (`tests/test_layers.py`).
"""
