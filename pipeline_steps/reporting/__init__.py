"""What a person reads: figures (PDF + PNG) and Table 1 (CSV, Markdown, LaTeX)."""
