"""surgeon's built-in passes: one module per pass, each registering itself with `@register_pass`."""
