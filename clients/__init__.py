"""Client runtime: executes Tasks on local data and returns Updates."""
