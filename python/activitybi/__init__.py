"""activitybi: ActivitySchema v2.0 logging, memory and analytics for MCP clients."""

from activitybi._core import (
    ActivitybiError,
    LruCache,
    Queue,
    QueueFull,
    QueueIOError,
    QueueReader,
    Redactor,
    __version__,
    ulid,
)

__all__ = [
    "ActivitybiError",
    "LruCache",
    "Queue",
    "QueueFull",
    "QueueIOError",
    "QueueReader",
    "Redactor",
    "__version__",
    "ulid",
]
