"""Explaining a verdict: text, the timeline plot, HTML, the artifact tree, merged summaries."""
