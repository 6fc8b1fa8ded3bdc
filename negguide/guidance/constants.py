"""Constants the guidance math and the settings share (no torch here)."""

DEFAULT_EPS = 1e-8  # added to ||D_pos||^2 in the perpendicular projection
