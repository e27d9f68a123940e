"""timm Vision Transformers: building them from a spec, their weight files, their blocks."""
