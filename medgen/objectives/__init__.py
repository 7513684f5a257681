"""medgen.objectives."""
