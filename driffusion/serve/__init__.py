"""Serving at the edge: an HTTP server whose every request spans one draft group
([`driffusion.serve.server`][driffusion.serve.server]), its API
([`driffusion.serve.api`][driffusion.serve.api], [`driffusion.serve.app`][driffusion.serve.app]),
the queue and the group loops ([`driffusion.serve.dispatch`][driffusion.serve.dispatch]) and the
models it samples ([`driffusion.serve.models`][driffusion.serve.models]).

Needs the ``serve`` extra (FastAPI, uvicorn): ``pip install "driffusion[serve]"``.
"""
