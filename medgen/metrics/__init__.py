"""medgen.metrics."""
