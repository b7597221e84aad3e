"""Send one personalized e-mail blast through a pool of SMTP relays, durably."""

__version__ = "0.1.0"
