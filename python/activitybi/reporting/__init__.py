"""What a person or an operator sees: the report, status, metrics and traces."""
