"""Pseudo-labels from weak labels: GrabCut on boxes with the ellipse fallback."""
