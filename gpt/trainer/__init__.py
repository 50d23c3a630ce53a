"""The training loop and its setup (imports engine, model, data, config; nothing imports it but entry points)."""
