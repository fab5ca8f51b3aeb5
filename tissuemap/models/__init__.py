"""The two Pyro models of the cell2location method and what they share (device choice, posterior summaries)."""
