"""The data plane: HTTP server protocol, request pipeline, upstream client, compiled runtime."""
