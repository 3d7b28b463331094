"""Console scripts of lsms_core (lsms-info, lsms-segment)."""
