"""Optional bridges to other training libraries (each needs its extra: `pip install kdlib[trl]`)."""
