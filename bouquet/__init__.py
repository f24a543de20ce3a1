"""Bouquet: resident interaction and personalisation engine for the service city."""

__version__ = "0.1.0"
