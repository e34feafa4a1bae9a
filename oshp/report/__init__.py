"""How a table or figure is drawn: tables beside the paper's numbers, plots, qualitative parses, figure files."""
