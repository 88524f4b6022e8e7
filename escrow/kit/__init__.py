"""Code with no domain knowledge: identifiers, secrets, signing."""
