"""Notifier service: tells enterprises and institutions what happened to their demands and leads."""
