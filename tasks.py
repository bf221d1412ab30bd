"""The project's Invoke tasks: the claude-persist collection (see README)."""

from claude_persist.tasks import ns

__all__ = ["ns"]
