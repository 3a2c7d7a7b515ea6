"""`rast serve`: RAST behind the OpenAI API (protocol: wire format; app: routes; backend: the decode
thread; metrics: /metrics; server: binding, startup and shutdown)."""
