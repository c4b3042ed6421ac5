"""Watchlists: the signed, encrypted bundle an operator sends to one device, and the device's install policy.

`bundle` is the byte format (seal / verify / decrypt, no disk); `store` decides what a device installs and keeps the
installed bundle on disk, encrypted. See DESIGN.md section 5.
"""
