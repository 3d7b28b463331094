"""training: the bundled pipeline behind lsms-train and lsms-eval (builds on lsms_core)."""
