"""Everything that turns files into training batches."""
