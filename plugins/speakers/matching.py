"""Moved to the core: :mod:`asrhub.speakers` (protocols reach speaker matching through the hub's
interfaces, not through this plugin). Kept so that existing imports keep working."""

from asrhub.speakers import EngineMismatch, Match, Verification, closest, identify, score, verify

__all__ = ["EngineMismatch", "Match", "Verification", "closest", "identify", "score", "verify"]
