"""medgen.networks."""
