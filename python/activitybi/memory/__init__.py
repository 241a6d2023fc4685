"""What the server remembers of a customer: the insight journal and the context tiers."""
