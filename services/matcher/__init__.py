"""Matcher service: the product catalog, and matching accepted demands to products (leads)."""
