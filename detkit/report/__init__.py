"""The error-analysis report (report.html) and the dataset browser; matplotlib draws the figures."""
