"""fla-named plain-jnp references of each mixer kind (one module per kind, function `mixer`)."""
