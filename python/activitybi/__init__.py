"""activitybi: ActivitySchema v2.0 logging, memory and analytics for MCP clients."""

from activitybi._core import LruCache, Queue, QueueFull, QueueReader, __version__, ulid

__all__ = ["LruCache", "Queue", "QueueFull", "QueueReader", "__version__", "ulid"]
