"""Reports: the step report card (summary JSON and one self-contained HTML page), inline SVG
plots, and what each step puts on its card.

Pure functions of numbers and frames. May import: `mlpipe.errors` only.
"""
