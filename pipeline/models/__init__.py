"""Model builders: transformer encoder families (bert) and energy networks, one module each,
found by the registry's discovery."""
