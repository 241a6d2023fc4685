"""SafeSQL: named templates, the dataset template, query tickets, and what is drawn from results."""
