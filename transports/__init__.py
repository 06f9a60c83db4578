"""transports: arrives with issues #3/#4; the package exists so the layout and packaging are fixed now."""
