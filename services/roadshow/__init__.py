"""Roadshow service: the monthly SRDI investment and financing roadshow."""
