"""How fast things are: parameter and FLOP counts (Table 5) and measured pairs per second."""
