"""One module per `python -m pipeline` command; each registers itself with `cli.command`."""
