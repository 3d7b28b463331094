"""Importers of public datasets into the project's dataset format (``lsms-data import-*``)."""
