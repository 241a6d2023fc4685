"""The warehouse owner process: the one writer of the warehouse (upload, tickets, context refresh)."""
