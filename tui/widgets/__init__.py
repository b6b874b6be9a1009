"""Widgets drawn with rich text: a heatmap grid and braille line/scatter plots."""
