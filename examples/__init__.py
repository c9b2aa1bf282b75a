"""Models of one's own, as a researcher writes them (README, "Your own model")."""
