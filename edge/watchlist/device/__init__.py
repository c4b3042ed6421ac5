"""The device side of the watchlist: verify and open what the operator sealed (`verify`, `unseal`, `local`),
decide what may be installed (`policy`, pure), keep it (`store`, `record`) and search it (`matcher`). Nothing here
imports the operator side (`edge.watchlist.operator`: enrollment, sealing) or OpenCV (`tests/test_layers.py`)."""
