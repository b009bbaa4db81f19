"""What a person reads: the Markdown report, its figures and the offline `dvc plots` page."""
