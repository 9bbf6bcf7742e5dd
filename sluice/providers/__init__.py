"""Providers: the third parties Sluice submits to, described by ``[providers.NAME]`` TOML.

``base`` holds the protocol and decision values the engine uses, ``http`` the
config-driven adapter, ``registry`` builds providers from settings (and presets).
"""
