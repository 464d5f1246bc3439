"""The embedded engine (moto's Step Functions interpreter) and what we do to make it trustworthy."""
