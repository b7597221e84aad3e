"""The HTTP side of mailblast (`mailblast serve`): unsubscribe, dashboard and metrics."""
