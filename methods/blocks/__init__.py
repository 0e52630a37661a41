"""Reusable pieces of the methods: graph matching and its IMLE gradient, LVM-Med's graphs, PEAC's views,
Models Genesis' distortions. Not methods themselves: `methods/__init__.py` is the registry."""
