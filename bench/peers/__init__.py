"""The peers: small faithful implementations of the service's contract, one per web stack."""
