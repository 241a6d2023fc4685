"""`python -m activitybi` is the `activitybi` command."""

from activitybi.cli import main

main()
