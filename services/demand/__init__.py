"""Demand service: the system of record for enterprises, institutions and financing demands."""
