"""medgen.data."""
