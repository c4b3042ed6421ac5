"""The operator side of the watchlist: enrollment (`build`), the reference chips it keeps (`references`), sealing
and signing (`seal`), the archive of sealed versions (`releases`) and delta diffs (`diff`). Devices never import it."""
