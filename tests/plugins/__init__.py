"""Plug-ins that tests load through the `plugins` config key, as a user's own modules would be."""
