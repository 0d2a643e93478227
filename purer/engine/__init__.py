"""The ECI meta-training engine (Alg. 1) and what it needs around it."""
