"""medgen.inference."""
