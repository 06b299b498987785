"""The farmers' HTTP API on aiohttp: app factory, routes and marshmallow schemas."""
