"""Privacy as one concern: pseudonyms, the erasure cascade and register, compaction, export
and the audit log (docs/privacy.md)."""
