"""Every use of a private Lightning attribute, each with a fallback, so an upgrade breaks here."""

from __future__ import annotations

import lightning.pytorch as pl


def request_graceful_stop(trainer: pl.Trainer) -> None:
    """Make Lightning's loops stop as they do on SIGTERM: after the current batch, raising
    ``SIGTERMException`` (Lightning 2.x reads ``trainer._signal_connector.received_sigterm``).

    Without that flag (another Lightning version) a ``KeyboardInterrupt`` stops the run at once,
    which is Lightning's own Ctrl-C behaviour.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is None or not hasattr(connector, "received_sigterm"):
        raise KeyboardInterrupt
    connector.received_sigterm = True
