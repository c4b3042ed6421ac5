"""Edge face-watchlist appliance.

Detects, aligns and embeds faces on the device with quantized TFLite models, matches them against a locally
synced watchlist and publishes only match events. Importing the package has no side effects: models, runtimes and
vendor libraries load lazily when a command needs them.
"""

__version__ = "0.1.0"
