"""The pure core: values and rules with no I/O (no aiohttp, aiosqlite, yaml, asyncio or marshmallow).

config values, the failure rule, routing, events and outcomes, body handling, errors, redaction, time.
"""
