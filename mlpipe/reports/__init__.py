"""Reports: the step report card (summary JSON and one self-contained HTML page), inline SVG
plots, what each step puts on its card, and the team report's tables and charts.

Pure functions of numbers, frames and runs already read. May import: `mlpipe.errors`.
"""
