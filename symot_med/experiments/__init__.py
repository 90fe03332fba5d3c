"""Measurements that back design decisions; each writes a results page."""
