"""medgen.transforms."""
