"""Outreach: Bouquet starts the contact — the next best nudge, at the right hour, within
caps, with a holdout that proves the lift (docs/outreach.md)."""
